#!/usr/bin/env python3
"""Mutation testing of the device code: applies each mutation below (a small, realistic bug in
kernels/ or src/gpu) to a scratch copy of the working tree, runs the device tests on the
emulator, and expects them to fail. Prints one line per mutant and the killed/total count;
exits non-zero when a mutant survives (or no longer applies: the list must follow the code).

    python3 scripts/mutate_kernels.py [--only SUBSTRING] [--keep-scratch]

Not part of CI (about a minute per mutant on two cores). cargo-mutants covers src/cpu and
src/train (see README, "Tests and benchmarks"); it cannot mutate CUDA sources, hence this list.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests every mutant runs against (the emulator is the default device).
TESTS = ["kernels_parity", "gpu_engine"]

# (name, file, original text, mutated text). The original must occur exactly once.
MUTANTS = [
    ("softmax without the max subtraction", "kernels/attention.cu",
     "const float p = expf(pr[j] - mx);", "const float p = expf(pr[j]);"),
    ("softmax backward drops the row dot product", "kernels/attention.cu",
     "dsr[j] = pr[j] * (dsr[j] - dot);", "dsr[j] = pr[j] * dsr[j];"),
    ("dQ without the scale", "kernels/attention.cu",
     "dq[e] = scale * s;", "dq[e] = s;"),
    ("gradient norm ignores elements past 256x256", "kernels/optim.cu",
     "for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n       i += (long long)gridDim.x * blockDim.x) {\n    const double x = g[i];",
     "for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n && i < 65536;\n       i += (long long)gridDim.x * blockDim.x) {\n    const double x = g[i];"),
    ("clip coefficient not capped at 1", "kernels/optim.cu",
     "stats[3] = coef < 1.0 ? (float)coef : 1.0f;", "stats[3] = (float)coef;"),
    ("AdamW without the second-moment bias correction", "kernels/optim.cu",
     "const float denom = sqrtf(vi) / bc2_sqrt + eps;", "const float denom = sqrtf(vi) + eps;"),
    ("AdamW decays every parameter", "kernels/optim.cu",
     "if (decay[i]) pi *= keep;", "pi *= keep;"),
    ("matmul A tile load bounded by the tile, not the matrix", "kernels/matmul.cu",
     "(gi < m && gk < k) ? a[", "(gk < k) ? a["),
    ("matmul ignores ACCUMULATE", "kernels/matmul.cu",
     "if (flags & VITK_MM_ACCUMULATE)\n        c[dst] += v;", "if (false)\n        c[dst] += v;"),
    ("matmul bias added after GELU", "kernels/matmul.cu",
     "      if (bias) v += bias[j];\n      const long long rowmajor", "      const long long rowmajor"),
    ("QKV scatter swaps head and q/k/v", "kernels/matmul.cu",
     "dst = (((long long)s * batch + bi) * qkv_heads + h)", "dst = (((long long)h * batch + bi) * qkv_heads + s)"),
    ("column sums drop the last chunk", "kernels/matmul.cu",
     "for (int c = 0; c < chunks; c++) s += partial", "for (int c = 0; c < chunks - 1; c++) s += partial"),
    ("LayerNorm eps 1e-5 instead of 1e-6", "kernels/layernorm.cu",
     "#define VITK_LN_EPS 1e-6f", "#define VITK_LN_EPS 1e-5f"),
    ("LayerNorm unbiased variance", "kernels/layernorm.cu",
     "const float var = vitk_block_sum(q, scratch) / dim;", "const float var = vitk_block_sum(q, scratch) / (dim - 1);"),
    ("LayerNorm backward overwrites dx instead of accumulating", "kernels/layernorm.cu",
     "dxr[c] += rs * (g - mean_g - xhat * mean_gx);", "dxr[c] = rs * (g - mean_g - xhat * mean_gx);"),
    ("LayerNorm backward blocks skip their last row", "kernels/layernorm.cu",
     "const int r1 = min(rows, r0 + rows_per_block);", "const int r1 = min(rows, r0 + rows_per_block - 1);"),
    ("LayerNorm weight-gradient reduce drops the last block", "kernels/layernorm.cu",
     "for (int i = 0; i < blocks; i++) {", "for (int i = 0; i < blocks - 1; i++) {"),
    ("GELU as 1 + erf (cancels in the lower tail)", "kernels/gelu.cu",
     "out[i] = 0.5f * v * erfcf(-v * VITK_INV_SQRT2);", "out[i] = 0.5f * v * (1.0f + erff(v * VITK_INV_SQRT2));"),
    ("GELU backward without the density term", "kernels/gelu.cu",
     "dx[i] = dout[i] * (cdf + v * pdf);", "dx[i] = dout[i] * cdf;"),
    ("cross-entropy arg-max loses the lowest-index tie-break", "kernels/loss.cu",
     "if (ov > v || (ov == v && oi < idx)) {", "if (ov > v) {"),
    ("cross-entropy smoothing target not divided by K", "kernels/loss.cu",
     "const float target = c == y ? 1.0f - smoothing + smoothing * inv_k : smoothing * inv_k;",
     "const float target = c == y ? 1.0f - smoothing + smoothing * inv_k : smoothing;"),
    ("cross-entropy through log_z = m + lse (loses precision on large logits)", "kernels/loss.cu",
     "drow[c] = (expf((row[c] - mx) - lse) - target) * inv_b;", "drow[c] = (expf(row[c] - (mx + lse)) - target) * inv_b;"),
    ("block sum reads lanes past the end of a partial warp", "kernels/reduce.cuh",
     "if (lane + offset < lanes) v += other;", "v += other;"),
    ("tokens forward adds position 0 everywhere", "kernels/tokens.cu",
     "x[i] = e + pos[(long long)tok * dim + c];", "x[i] = e + pos[c];"),
    ("position gradient skips the last image", "kernels/tokens.cu",
     "for (int b = 0; b < batch; b++) s += dx[(long long)b * t * dim + i];", "for (int b = 0; b < batch - 1; b++) s += dx[(long long)b * t * dim + i];"),
    ("mean pooling divides by T - 1", "kernels/tokens.cu",
     "pooled[i] = s * (1.0f / t);", "pooled[i] = s * (1.0f / (t - 1 + (t == 1)));"),
    ("im2col swaps ky and kx", "kernels/patch_embed.cu",
     "const int ky = k / patch, kx = k - ky * patch;", "const int kx = k / patch, ky = k - kx * patch;"),
    ("device engine stops zeroing gradients", "src/gpu/engine.rs",
     "        self.grads.fill_bytes(rt, 0)?;\n", ""),
    ("AdamW step counter not advanced", "src/gpu/engine.rs",
     "        self.step += 1;\n", ""),
    ("bias-correction scalars at step t - 1", "src/gpu/kernels.rs",
     "        let t = t as i32;", "        let t = (t as i32 - 1).max(1);"),
]


def run(cmd, cwd, env, log):
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        return subprocess.call(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run the mutants whose name contains this")
    ap.add_argument("--keep-scratch", action="store_true")
    args = ap.parse_args()

    scratch = tempfile.mkdtemp(prefix="vitk-mutants-")
    tree = os.path.join(scratch, "tree")
    ignore = shutil.ignore_patterns("target", ".git", ".cuda-toolchain", ".gpu-bundle", "runs")
    shutil.copytree(ROOT, tree, ignore=ignore)
    env = dict(os.environ, VITK_NO_NVCC="1", CARGO_TARGET_DIR=os.path.join(scratch, "target"))
    env.pop("VITK_TEST_DEVICE", None)
    test_cmd = ["cargo", "test", "--release"] + [a for t in TESTS for a in ("--test", t)]
    log = os.path.join(scratch, "log.txt")
    print(f"scratch copy: {tree}; logs: {log}", file=sys.stderr)
    if run(test_cmd, tree, env, log) != 0:
        sys.exit(f"the unmutated tree fails its tests: see {log}")

    selected = [m for m in MUTANTS if not args.only or args.only in m[0]]
    killed, problems = 0, []
    for name, rel, old, new in selected:
        path = os.path.join(tree, rel)
        text = open(path).read()
        if text.count(old) != 1:
            problems.append(f"does not apply ({text.count(old)} matches): {name}")
            print(f"  STALE     {name} ({rel})")
            continue
        open(path, "w").write(text.replace(old, new))
        t0 = time.time()
        rc = run(test_cmd, tree, env, log)
        open(path, "w").write(text)
        verdict = "killed" if rc != 0 else "SURVIVED"
        killed += rc != 0
        if rc == 0:
            problems.append(f"survived: {name}")
        print(f"  {verdict:9} {name} ({rel}, {time.time() - t0:.0f} s)", flush=True)
    print(f"kernel mutants killed: {killed}/{len(selected)}")
    if not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
