#!/usr/bin/env python3
"""Mutation testing of the device code: applies each mutation below (a small, realistic bug in
kernels/ or src/gpu) to a scratch copy of the working tree, runs the device tests on the
emulator, and expects them to fail. Prints one line per mutant and the killed/total count;
exits non-zero when a mutant survives (or no longer applies: the list must follow the code).

    python3 scripts/mutate_kernels.py [--only SUBSTRING ...] [--keep-scratch]

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

# The tests every mutant runs against (the emulator is the default device; `training` holds
# the CPU optimizer's tests against PyTorch's formula, for mutants of code both engines share).
TESTS = ["kernels_parity", "matmul_parity", "mim_parity", "gpu_engine", "tensor_core_wrappers", "step_pipeline", "training",
         "mim_colour_parity"]

# (name, file, original text, mutated text). The original must occur exactly once, and the
# mutant must still build (a mutant that leaves a parameter unused would fail -Werror and
# prove nothing): the script reports those as BUILD-FAILED, not as killed.
MUTANTS = [
    # attention.cu (fp32, fused)
    ("fp32 attention forward without the running-max rescale", "kernels/attention.cu",
     "      for (int c = 0; c < VITK_ATT_COLS; c++) o[i][c] *= corr;", "      for (int c = 0; c < VITK_ATT_COLS; c++) o[i][c] *= 1.0f + 0.0f * corr;"),
    ("fp32 attention backward reads one lse for the whole tile", "kernels/attention.cu",
     "const float p = query ? expf(sd * scale - lse_s[lane]) : 0.0f;", "const float p = query ? expf(sd * scale - lse_s[0]) : 0.0f;"),
    ("fp32 dQ without the scale", "kernels/attention.cu",
     "      if (lane + 32 * c < hd) dst[lane + 32 * c] = scale * dq[i][c];", "      if (lane + 32 * c < hd) dst[lane + 32 * c] = dq[i][c];"),
    # (the score mask alone is redundant with the probability mask: both go together)
    ("fp32 attention keys past T not masked", "kernels/attention.cu",
     "      const float s = key ? sd * scale : -3.402823466e38f;\n      const float m_new = fmaxf(m[i], warp_max(s));\n      const float corr = expf(m[i] - m_new);\n      const float p = key ? expf(s - m_new) : 0.0f;",
     "      const float s = sd * scale;\n      const float m_new = fmaxf(m[i], warp_max(s));\n      const float corr = expf(m[i] - m_new);\n      const float p = expf(s - m_new) + 0.0f * key;"),
    # attention_probs.cu (attention maps)
    ("attention probabilities without the scale", "kernels/attention_probs.cu",
     "probs[bh * tt + e] = expf(s * scale - lse[bh * t + i]);", "probs[bh * tt + e] = expf(s + 0.0f * scale - lse[bh * t + i]);"),
    ("attention probabilities read the key's lse", "kernels/attention_probs.cu",
     "probs[bh * tt + e] = expf(s * scale - lse[bh * t + i]);", "probs[bh * tt + e] = expf(s * scale - lse[bh * t + j]);"),
    ("attention probabilities of q against q", "src/gpu/engine.rs",
     "let (q, key) = (blk.qkv.slice(0, hl), blk.qkv.slice(hl, hl));", "let (q, key) = (blk.qkv.slice(0, hl), blk.qkv.slice(0, hl));"),
    # attention_tc.cu (bf16, fused, tensor cores)
    ("bf16 attention forward without the running-max rescale", "kernels/attention_tc.cu",
     "      for (int r = 0; r < 4; r++) o[n][r] *= corr[r >> 1];", "      for (int r = 0; r < 4; r++) o[n][r] *= 1.0f + 0.0f * corr[r >> 1];"),
    ("bf16 attention keys past T not masked", "kernels/attention_tc.cu",
     "const float x = k0 + col_of(j, r) < t ? s[j][r] * c : VITK_NEG_INF;", "const float x = s[j][r] * c;"),
    ("bf16 softmax backward without rowdot", "kernels/attention_tc.cu",
     "        dp[j][r] = pr * (dp[j][r] - dot_s[col]);  // dS^T", "        dp[j][r] = pr * (dp[j][r] - 0.0f * dot_s[col]);  // dS^T"),
    ("bf16 dQ without the scale", "kernels/attention_tc.cu",
     "vitk_st(dqkv + ((long long)b * t + row) * row3 + h * hd + col, scale * dq[n][r]);", "vitk_st(dqkv + ((long long)b * t + row) * row3 + h * hd + col, dq[n][r]);"),
    ("P fragments packed with the halves swapped", "kernels/attention_tc.cu",
     "  const unsigned a[4] = {vitk_pack_bf16x2(p[2 * kc][0], p[2 * kc][1]),", "  const unsigned a[4] = {vitk_pack_bf16x2(p[2 * kc][1], p[2 * kc][0]),"),
    ("lse kept in log2 units", "kernels/attention_tc.cu",
     "if (row < t) lse[(long long)bh * t + row] = (m[i] + log2f(l[i])) * VITK_FA_LN2;", "if (row < t) lse[(long long)bh * t + row] = (m[i] + log2f(l[i])) * (VITK_FA_LN2 * 0.0f + 1.0f);"),
    ("rowdot skips the last head column", "kernels/attention_tc.cu",
     "for (int e = lane; e < hd; e += 32) s += vitk_ld(dout + at + e) * vitk_ld(out + at + e);", "for (int e = lane; e < hd - 1; e += 32) s += vitk_ld(dout + at + e) * vitk_ld(out + at + e);"),
    # optim.cu
    ("gradient norm ignores elements past 256x256", "kernels/optim.cu",
     "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n       i += (long long)gridDim.x * blockDim.x) {\n    const double x = g[i];",
     "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n && i < 65536;\n       i += (long long)gridDim.x * blockDim.x) {\n    const double x = g[i];"),
    ("clip coefficient not capped at 1", "kernels/optim.cu",
     "stats[3] = coef < 1.0 ? (float)coef : 1.0f;", "stats[3] = (float)coef;"),
    ("AdamW without the second-moment bias correction", "kernels/optim.cu",
     "const float denom = sqrtf(vi) / bc2_sqrt + eps;", "const float denom = sqrtf(vi) / (bc2_sqrt * 0.0f + 1.0f) + eps;"),
    ("AdamW applies the first group's decay to every parameter", "kernels/optim.cu",
     "const float keep = per_group[2 * k], step_size = per_group[2 * k + 1];",
     "const float keep = per_group[0], step_size = per_group[2 * k + 1];"),
    ("AdamW writes the bf16 copy of the old parameters", "kernels/optim.cu",
     "    p[i] = pi;\n    if (p_low) vitk_st(p_low + i, pi);", "    if (p_low) vitk_st(p_low + i, p[i]);\n    p[i] = pi;"),
    # epilogue.cuh (both matmuls)
    ("bias added after GELU", "kernels/epilogue.cuh",
     "  if (bias) v += bias[j];\n  if (flags & VITK_MM_GELU) {\n    vitk_st(aux + rowmajor, v);\n    v = vitk_gelu(v);\n  }",
     "  if (flags & VITK_MM_GELU) {\n    vitk_st(aux + rowmajor, v);\n    v = vitk_gelu(v);\n  }\n  if (bias) v += bias[j];"),
    ("GELU backward multiplies by gelu instead of gelu'", "kernels/epilogue.cuh",
     "v *= vitk_gelu_grad(vitk_ld(aux + rowmajor));", "v *= vitk_gelu(vitk_ld(aux + rowmajor));"),
    ("matmul ignores ACCUMULATE", "kernels/epilogue.cuh",
     "if (flags & VITK_MM_ACCUMULATE) v += vitk_ld(c + dst);", "if (flags & 0) v += vitk_ld(c + dst);"),
    ("QKV scatter swaps head and q/k/v", "kernels/epilogue.cuh",
     "dst = (((long long)s * batch + b) * qkv_heads + h)", "dst = (((long long)h * batch + b) * qkv_heads + s)"),
    ("GELU as 1 + erf (cancels in the lower tail)", "kernels/epilogue.cuh",
     "  return 0.5f * x * erfcf(-x * VITK_INV_SQRT2);", "  return 0.5f * x * (1.0f + erff(x * VITK_INV_SQRT2));"),
    # matmul.cu (fp32)
    ("fp32 matmul A tile load bounded by the tile, not the matrix", "kernels/matmul.cu",
     "(gi < m && gk < k_end) ? a[", "(gk < k_end) ? a["),
    ("fp32 split-K blocks overlap (each runs to the end of K)", "kernels/matmul.cu",
     "const int k_end = min(k, k_begin + k_chunk);", "const int k_end = k + 0 * k_chunk;"),
    ("split-K reduction drops the last split", "kernels/matmul.cu",
     "for (int z = 0; z < splits; z++) s += ws[z * mn + i];", "for (int z = 0; z < splits - 1; z++) s += ws[z * mn + i];"),
    ("fp32 bias row sums drop a quarter of each tile", "kernels/matmul.cu",
     "for (int kk = part * 4; kk < part * 4 + 4; kk++) my_rowsum", "for (int kk = part * 4; kk < part * 4 + 3; kk++) my_rowsum"),
    # matmul_tc.cu and tile.cuh (bf16 tensor cores)
    ("cp.async pipeline waits for one group too few", "kernels/matmul_tc.cu",
     "vitk_cp_async_wait<VITK_TC_STAGES - 2>();", "vitk_cp_async_wait<VITK_TC_STAGES - 1>();"),
    ("no barrier between the pipeline wait and the tile reads", "kernels/matmul_tc.cu",
     "    __syncthreads();  // ... in every thread; and stage (kt - 1) % STAGES is free to refill\n", ""),
    ("tensor-core epilogue column off by one in each pair", "kernels/matmul_tc.cu",
     "const int gj = col0 + wn0 + 8 * j + 2 * t + (r & 1);", "const int gj = col0 + wn0 + 8 * j + 2 * t + (r & 1) * 0;"),
    ("tensor-core bias row sums use one part of each stage", "kernels/matmul_tc.cu",
     "for (int p = 0; p < PARTS; p++) s += rowsum[p * BM + threadIdx.x];", "for (int p = 0; p < 1; p++) s += rowsum[p * BM + threadIdx.x];"),
    ("tile loads ignore the K edge (split range)", "kernels/tile.cuh",
     "const int valid = gr < rows ? min(8, max(0, cols - gc)) : 0;", "const int valid = gr < rows ? 8 + 0 * cols : 0;"),
    ("A fragment from the wrong K half", "kernels/tile.cuh",
     "vitk_ldmatrix<4, false>(a, tile + (m0 + (lane & 15)) * LD + k0 + (lane >> 4) * 8);", "vitk_ldmatrix<4, false>(a, tile + (m0 + (lane & 15)) * LD + k0 + (lane >> 4) * 0);"),
    ("B fragments of an N-major tile with K and N halves swapped", "kernels/tile.cuh",
     "vitk_ldmatrix<4, true>(x, tile + (k0 + (j & 1) * 8 + r) * LD + n0 + (j >> 1) * 8);", "vitk_ldmatrix<4, true>(x, tile + (k0 + (j >> 1) * 8 + r) * LD + n0 + (j & 1) * 8);"),
    # layernorm.cu
    ("LayerNorm eps 1e-5 instead of 1e-6", "kernels/layernorm.cu",
     "#define VITK_LN_EPS 1e-6f", "#define VITK_LN_EPS 1e-5f"),
    ("LayerNorm unbiased variance", "kernels/layernorm.cu",
     "const float rs = rsqrtf(vitk_warp_sum(q) / dim + VITK_LN_EPS);", "const float rs = rsqrtf(vitk_warp_sum(q) / (dim - 1) + VITK_LN_EPS);"),
    ("LayerNorm backward overwrites dx instead of accumulating", "kernels/layernorm.cu",
     "const float v = dxr[c] + rs * (gr[c] * weight[c] - mean_g - xhat * mean_gx);", "const float v = 0.0f * dxr[c] + rs * (gr[c] * weight[c] - mean_g - xhat * mean_gx);"),
    ("LayerNorm backward blocks skip their last row", "kernels/layernorm.cu",
     "const int r1 = min(rows, r0 + VITK_LN_ROWS);", "const int r1 = min(rows, r0 + VITK_LN_ROWS - 1);"),
    ("LayerNorm weight gradient without x-hat's rstd", "kernels/layernorm.cu",
     "w += g * (x[(long long)r * dim + c] - mean[r]) * rstd[r];", "w += g * (x[(long long)r * dim + c] - mean[r]) * (rstd[r] * 0.0f + 1.0f);"),
    ("LayerNorm weight-gradient reduce drops the last block", "kernels/layernorm.cu",
     "for (int i = 0; i < blocks; i++) {", "for (int i = 0; i < blocks - 1; i++) {"),
    ("LayerNorm bf16 copy of dx before its update", "kernels/layernorm.cu",
     "      dxr[c] = v;\n      if (dx_low) vitk_st(dx_low + (long long)r * dim + c, v);",
     "      if (dx_low) vitk_st(dx_low + (long long)r * dim + c, dxr[c] + 0.0f * v);\n      dxr[c] = v;"),
    # softmax_ce.cuh (the rows of loss.cu and mim_colour.cu), reduce.cuh, tokens.cu, patch_embed.cu
    ("cross-entropy arg-max loses the lowest-index tie-break", "kernels/softmax_ce.cuh",
     "if (ov > v || (ov == v && oi < idx)) {", "if (ov > v || (ov == v && oi > idx)) {"),
    ("cross-entropy smoothing target not divided by K", "kernels/softmax_ce.cuh",
     "const float target = c == y ? 1.0f - smoothing + smoothing * inv_k : smoothing * inv_k;",
     "const float target = c == y ? 1.0f - smoothing + smoothing * inv_k : smoothing;"),
    ("cross-entropy through log_z = m + lse (loses precision on large logits)", "kernels/softmax_ce.cuh",
     "vitk_st(drow + c, (expf((row[c] - mx) - lse) - target) * grad_scale);", "vitk_st(drow + c, (expf(row[c] - (mx + lse)) - target) * grad_scale);"),
    # mim_colour.cu (the ViT paper's colour objective, tests/mim_colour_parity.rs)
    ("mean colour un-normalised through an FMA", "kernels/mim_colour.cu",
     "s = __fadd_rn(s, __fadd_rn(__fmul_rn(row[kx], stdv[c]), mean[c]));", "s = __fadd_rn(s, __fmaf_rn(row[kx], stdv[c], mean[c]));"),
    ("masked cross-entropy averaged over all rows", "kernels/mim_colour.cu",
     "stats[0] = total * inv_m;", "stats[0] = total / rows;"),
    ("masked cross-entropy leaves unmasked rows of dlogits unwritten", "kernels/mim_colour.cu",
     "for (int c = lane; c < classes; c += 32) vitk_st(drow + c, 0.0f);", "for (int c = lane; c < classes && rows < 0; c += 32) vitk_st(drow + c, 0.0f);"),
    ("block sum reads lanes past the end of a partial warp", "kernels/reduce.cuh",
     "if (lane + offset < lanes) v += other;", "if (lane + offset < lanes || true) v += other;"),
    ("tokens forward adds position 0 everywhere", "kernels/tokens.cu",
     "x[i] = e + pos[(long long)tok * dim + c];", "x[i] = e + pos[c + 0 * tok];"),
    ("position gradient skips the last image", "kernels/tokens.cu",
     "for (int b = 0; b < batch; b++) s += dx[(long long)b * t * dim + i];", "for (int b = 0; b < batch - 1; b++) s += dx[(long long)b * t * dim + i];"),
    ("mean pooling divides by T - 1", "kernels/tokens.cu",
     "pooled[i] = s * (1.0f / t);", "pooled[i] = s * (1.0f / (t - 1 + (t == 1)));"),
    ("im2col swaps ky and kx", "kernels/patch_embed.cu",
     "const int ky = k / patch, kx = k - ky * patch;", "const int kx = k / patch, ky = k - kx * patch;"),
    # mim.cu (masked image modelling, tests/mim_parity.rs)
    ("mask-token gradient skips the last chunk", "kernels/mim.cu",
     "for (int j = 0; j < chunks; j++)", "for (int j = 0; j < chunks - 1; j++)"),
    ("masked patches pass their gradient to pe", "kernels/mim.cu",
     "vitk_st(dpe + i, mask[i / dim] ? 0.0f : dx[i]);", "vitk_st(dpe + i, (mask[i / dim] && false) ? 0.0f : dx[i]);"),
    ("pixel targets channel-first (im2col order, not MAE's)", "kernels/mim.cu",
     "const int c = i % channels, q = i / channels;", "const int c = i / (patch * patch), q = i % (patch * patch);"),
    ("norm_pix with the biased variance", "kernels/mim.cu",
     "const float var = k > 1 ? ss / (k - 1) : 0.0f;", "const float var = k > 1 ? ss / k : 0.0f;"),
    ("masked loss averaged over all rows", "kernels/mim.cu",
     "if (threadIdx.x == 0) loss[0] = m > 0.0f ? s / m : 0.0f;", "if (threadIdx.x == 0) loss[0] = m > 0.0f ? s / rows : 0.0f;"),
    ("substitution gradient not passed to the source patch", "kernels/mim.cu",
     "      if (src[r0 + j] == m) s += dx[(r0 + j) * dim + c];", "      if (src[r0 + j] == m && j == m) s += dx[(r0 + j) * dim + c];"),
    # the engine and launchers (Rust, src/gpu)
    ("device engine stops zeroing gradients", "src/gpu/engine.rs",
     "        self.trainable(self.grads).fill_bytes(rt, 0)?;\n", ""),
    ("AdamW step counter not advanced", "src/gpu/engine.rs",
     "        self.step += 1;\n", ""),
    ("bias-correction scalars at step t - 1", "src/optim.rs",
     "        let t = i32::try_from(t).unwrap_or(i32::MAX);", "        let t = i32::try_from(t.saturating_sub(1).max(1)).unwrap_or(i32::MAX);"),
    ("queued step: AdamW step counter not advanced", "src/gpu/engine/pipeline.rs",
     "        self.step += 1;\n", ""),
    ("queued step: AdamW scalars not copied to the device", "src/gpu/engine/pipeline.rs",
     "        slot.hyper.upload_to(self.hyper.view())?;\n", ""),
    ("queued step: one graph for clipped and unclipped steps", "src/gpu/engine/pipeline.rs",
     "            clip: clip.map(f64::to_bits),", "            clip: None,"),
    ("queued step: statistics read from the other slot", "src/gpu/engine/pipeline.rs",
     "        let slot = &self.pipeline.slots[q.slot];", "        let slot = &self.pipeline.slots[1 - q.slot];"),
    ("split-K plans one split too few", "src/gpu/kernels/matmul.rs",
     "    (k.div_ceil(chunk).max(1), chunk)", "    (k.div_ceil(chunk).max(2) - 1, chunk)"),
    ("bf16 path reads the fp32 weights' bits as bf16", "src/gpu/engine.rs",
     "            Some(low) => Operand::Bf16(low.view().slice(r.start, r.len())),", "            Some(low) => Operand::Bf16(low.view().slice(r.start / 2, r.len())),"),
]


def run(cmd, cwd, env, log):
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        return subprocess.call(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="run the mutants whose name contains this (repeatable)")
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

    selected = [m for m in MUTANTS if not args.only or any(o in m[0] for o in args.only)]
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
        if run(test_cmd + ["--no-run"], tree, env, log) != 0:
            open(path, "w").write(text)
            problems.append(f"does not build: {name}")
            print(f"  BUILD-FAILED {name} ({rel})", flush=True)
            continue
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
