#!/usr/bin/env python3
"""Numerical side-by-side check of vitk training against the PyTorch/timm reference.

For every (model, pool) case this script:
  1. builds the reference VisionTransformer with a fixed torch seed and saves its initial
     state dict as safetensors (timm names and shapes, the layout `vitk train --init-from`
     loads strictly);
  2. writes a synthetic set in the CIFAR-10 binary layout with `vitk synth`;
  3. runs `vitk train --init-from ... --no-augment --no-shuffle --schedule constant
     --warmup-epochs 0 --steps N` on it;
  4. runs the same N steps in PyTorch fp32: the same batches (drop_last, records of
     data_batch_1.bin .. data_batch_5.bin in file order), the same normalisation, AdamW with
     the same hyperparameters and parameter groups, the same label-smoothed cross-entropy;
  5. prints a per-step loss table (vitk, reference, relative difference), and compares
     the final parameters (vitk's RUN_DIR/model.safetensors) tensor by tensor with the
     norm-wise relative difference ||a - b|| / ||b||.

Verdict per case: the largest per-step relative loss difference must be <= --tol (1e-4),
and every tensor's parameter difference, leaving out its --outliers largest elements, must be
<= --param-tol (1e-4). The outliers are listed with the smallest |gradient| the reference
saw there: an element whose gradient once cancelled to below Adam's eps takes a step that
fp32 rounding decides. The key rows of the qkv bias have an exactly zero gradient in real
arithmetic (softmax ignores a shift shared by a row of scores) and are shown, not compared.

The reference (torch, timm, safetensors) is only used here: it is never a dependency of
vitk, its tests or its CI. Run it through scripts/compare-pytorch.sh.

Exit status: 0 when every case passes, 1 when one fails, 2 on a setup error.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import timm
    from timm.models.vision_transformer import VisionTransformer
    from safetensors.torch import save_file, load_file
except ImportError as e:  # the wrapper checks too; this keeps a direct run readable
    print(f"compare_pytorch.py needs torch, timm, safetensors and numpy: {e}", file=sys.stderr)
    sys.exit(2)

# Model shapes: (D, L, H, M); every case is 32x32x3, patch 4, 10 classes, like vitk's presets.
PRESETS = {
    "micro": (64, 4, 4, 128),
    "seed": (256, 6, 8, 1024),
}
IMG, PATCH, CHANS, CLASSES = 32, 4, 3, 10
RECORD = 1 + CHANS * IMG * IMG  # CIFAR-10 binary record: label byte + R, G, B planes
# vitk's default normalisation (CIFAR-10 statistics).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)




def die(msg):
    """A setup error (missing input, failed vitk command): message on stderr, exit status 2."""
    print(msg, file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------- reference


def build_reference(dims, pool, seed, fused_attn):
    """The reference ViT for vitk's config (D, L, H, M) and pool mode, seeded init.

    pool=cls  -> class token, final `norm`, head on token 0 (global_pool='token');
    pool=mean -> no class token, tokens averaged, `fc_norm` then head (global_pool='avg',
                 which makes fc_norm default to on and drops the final norm).
    LayerNorm eps is 1e-6 (the reference ViT's default norm layer), GELU is exact, qkv has a bias,
    all dropout rates are 0.
    """
    d, depth, heads, mlp = dims
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=IMG,
        patch_size=PATCH,
        in_chans=CHANS,
        num_classes=CLASSES,
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp / d,
        qkv_bias=True,
        class_token=(pool == "cls"),
        global_pool=("token" if pool == "cls" else "avg"),
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    # Attention path: the explicit math (q k^T * scale, softmax, @ v) or
    # F.scaled_dot_product_attention. Both are fp32 on the CPU.
    for blk in model.blocks:
        blk.attn.fused_attn = fused_attn
    # mlp_ratio is a float: make sure it produced exactly M hidden units.
    assert model.blocks[0].mlp.fc1.out_features == mlp, "mlp width mismatch"
    return model.float()


def weight_decay_groups(model, weight_decay):
    """The reference's param_groups_weight_decay: no decay for 1-D tensors (biases,
    LayerNorm weights) and for the names in model.no_weight_decay() (pos_embed, cls_token)."""
    skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def read_cifar_dir(data_dir):
    """All training records of data_batch_1.bin..data_batch_5.bin in file order:
    (uint8 images [n, 3, 32, 32], int64 labels [n])."""
    chunks = []
    for k in range(1, 6):
        path = Path(data_dir) / f"data_batch_{k}.bin"
        if path.is_file():
            raw = np.fromfile(path, dtype=np.uint8)
            assert raw.size % RECORD == 0, f"{path}: size {raw.size} is not a multiple of {RECORD}"
            chunks.append(raw.reshape(-1, RECORD))
    if not chunks:
        die(f"no data_batch_*.bin in {data_dir}")
    recs = np.concatenate(chunks)
    labels = torch.from_numpy(recs[:, 0].astype(np.int64))
    images = torch.from_numpy(recs[:, 1:].copy()).reshape(-1, CHANS, IMG, IMG)
    return images, labels


def normalise(images_u8):
    """(x / 255 - mean) / std per channel, in fp32, as vitk computes it
    (x * (1 / (255 std)) + (-mean / std), the constants rounded to fp32)."""
    mean = torch.tensor(MEAN, dtype=torch.float64)
    std = torch.tensor(STD, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).float().view(1, -1, 1, 1)
    shift = (-mean / std).float().view(1, -1, 1, 1)
    return images_u8.float() * scale + shift


def train_reference(model, images, labels, args, steps, batch_size):
    """`steps` AdamW steps on consecutive drop_last batches in file order.
    Returns (per-step losses, {name: smallest |gradient| each element saw over the steps}).
    The second serves the diagnosis of isolated parameter differences: an element whose
    gradient once cancelled to below Adam's eps takes a step decided by fp32 rounding."""
    model.train()  # no dropout anywhere (all rates 0), so train() only matters in name
    opt = torch.optim.AdamW(
        weight_decay_groups(model, args.weight_decay),
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        eps=1e-8,
        foreach=False,  # the plain per-tensor loop
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    per_epoch = images.shape[0] // batch_size
    losses = []
    min_grad = {n: torch.full_like(p, math.inf) for n, p in model.named_parameters()}
    for step in range(steps):
        b = step % per_epoch
        x = normalise(images[b * batch_size : (b + 1) * batch_size])
        y = labels[b * batch_size : (b + 1) * batch_size]
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        for n, p in model.named_parameters():
            torch.minimum(min_grad[n], p.grad.abs(), out=min_grad[n])
        opt.step()
        losses.append(loss.item())
    return losses, min_grad


# ----------------------------------------------------------------------------- vitk


def run(cmd, log_path):
    """Runs a command, keeping its output in log_path; exits with the log tail on failure."""
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = Path(log_path).read_text()[-3000:]
        die(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def vitk_train(args, data_dir, init_path, run_dir, model_name, dims, pool, steps, batch_size):
    """Runs vitk train and returns its per-step losses from RUN_DIR/metrics.jsonl."""
    d, depth, heads, mlp = dims
    cmd = [
        args.vitk, "train",
        "--data", data_dir,
        "--model", model_name,
        "--embed-dim", d, "--depth", depth, "--num-heads", heads, "--mlp-dim", mlp,
        "--pool", pool,
        "--batch-size", batch_size,
        "--lr", args.lr,
        "--schedule", "constant",
        "--warmup-epochs", 0,
        "--weight-decay", args.weight_decay,
        "--beta1", args.beta1,
        "--beta2", args.beta2,
        "--label-smoothing", args.label_smoothing,
        "--no-augment", "--no-shuffle",
        "--steps", steps,
        "--init-from", init_path,
        "--threads", args.threads,
        "--out", run_dir,
    ]
    cmd = [str(c) for c in cmd]
    run(cmd, Path(run_dir).parent / (Path(run_dir).name + ".log"))
    losses = {}
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "step":
                losses[int(rec["step"])] = float(rec["loss"])
    missing = [k for k in range(1, steps + 1) if k not in losses]
    if missing:
        die(f"{run_dir}/metrics.jsonl lacks steps {missing}")
    return [losses[k] for k in range(1, steps + 1)]


# ----------------------------------------------------------------------------- comparison


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def compare_case(args, data_dir, images, labels, workdir, model_name, pool, steps):
    dims = PRESETS[model_name]
    batch_size = args.batch_size
    tag = f"{model_name}-{pool}"
    print(f"\n=== {tag}: D{dims[0]} L{dims[1]} H{dims[2]} M{dims[3]}, batch {batch_size}, "
          f"{steps} steps, lr {args.lr}, wd {args.weight_decay}, "
          f"betas ({args.beta1}, {args.beta2}), label smoothing {args.label_smoothing}")

    model = build_reference(dims, pool, args.seed, fused_attn=(args.attn == "sdpa"))
    init_path = workdir / f"{tag}-init.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              str(init_path))

    run_dir = workdir / f"{tag}-run"
    if run_dir.exists():  # a previous run of this script in the same --work directory
        shutil.rmtree(run_dir)
    t0 = time.time()
    vitk_losses = vitk_train(args, data_dir, init_path, run_dir, model_name, dims, pool,
                             steps, batch_size)
    t_vitk = time.time() - t0
    t0 = time.time()
    ref_losses, min_grad = train_reference(model, images, labels, args, steps, batch_size)
    t_ref = time.time() - t0

    print(f"{'step':>4}  {'vitk loss':>12}  {'torch loss':>12}  {'rel diff':>10}")
    worst = 0.0
    for k, (a, b) in enumerate(zip(vitk_losses, ref_losses), start=1):
        r = rel(a, b)
        worst = max(worst, r)
        print(f"{k:>4}  {a:>12.7f}  {b:>12.7f}  {r:>10.3e}")
    loss_ok = worst <= args.tol
    print(f"max relative loss difference: {worst:.3e}  "
          f"{'PASS' if loss_ok else 'FAIL'} (tolerance {args.tol:g})")

    # Final parameters, tensor by tensor: ||vitk - ref|| / ||ref||.
    vitk_params = load_file(str(run_dir / "model.safetensors"))
    ref_params = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(ref_params, str(workdir / f"{tag}-torch-final.safetensors"))
    if set(vitk_params) != set(ref_params):
        print(f"parameter names differ: only vitk {sorted(set(vitk_params) - set(ref_params))}, "
              f"only torch {sorted(set(ref_params) - set(vitk_params))}")
        return loss_ok, False
    for name, ref in ref_params.items():
        if vitk_params[name].shape != ref.shape:
            print(f"{name}: shape {tuple(vitk_params[name].shape)} in vitk, "
                  f"{tuple(ref.shape)} in torch")
            return loss_ok, False
    rows = param_differences(vitk_params, ref_params, dims[0], args.outliers)
    checked = [r for r in rows if not r["key_bias"]]
    checked.sort(key=lambda r: -r["full"])
    n_show = min(args.show_params, len(checked))
    print(f"final parameters, relative difference ||vitk - torch|| / ||torch|| per tensor, "
          f"qkv split into its q, k, v rows; 'trimmed' leaves out the {args.outliers} largest "
          f"element differences (worst {n_show} of {len(checked)}):")
    print(f"  {'tensor':<34} {'full':>10} {'trimmed':>10}")
    for r in checked[:n_show]:
        print(f"  {r['label']:<34} {r['full']:>10.3e} {r['trimmed']:>10.3e}")
    worst = checked[0]
    worst_trim = max(checked, key=lambda r: r["trimmed"])
    median = sorted(r["full"] for r in checked)[len(checked) // 2]
    param_ok = worst_trim["trimmed"] <= args.param_tol
    print(f"worst parameter difference: {worst['full']:.3e} ({worst['label']}), "
          f"median {median:.3e}; worst trimmed {worst_trim['trimmed']:.3e} "
          f"({worst_trim['label']})  {'PASS' if param_ok else 'FAIL'} "
          f"(tolerance {args.param_tol:g} on the trimmed difference)")
    # Tensors that pass only once a few elements are left out: show those elements with
    # the smallest |gradient| the reference saw there. A value below Adam's eps (1e-8)
    # means the gradient cancelled to rounding noise, which Adam turns into a step of up
    # to ~lr, so the two sides legitimately disagree on that element.
    for r in checked:
        if r["full"] > args.param_tol >= r["trimmed"]:
            base = r["label"].split("[")[0]
            print(f"  {r['label']}: isolated elements carry the difference:")
            for idx, diff in r["top"]:
                g = min_grad[base].reshape(-1)[r["offset"] + idx].item()
                print(f"    element {r['offset'] + idx:>7}: |vitk - torch| {diff:.3e}, "
                      f"smallest |torch gradient| over the steps {g:.3e}")
    # The key bias: q.(k + b) = q.k + q.b shifts every score of a query row by the same
    # amount, which softmax ignores, so its gradient is exactly 0 in real arithmetic. Both
    # sides only see rounding noise there, and Adam (eps 1e-8) turns noise into steps of up
    # to ~lr: its values are noise on both sides and are not compared, only shown.
    for r in (r for r in rows if r["key_bias"]):
        print(f"  (not compared) {r['label']:<34} {r['full']:.3e}  ||vitk|| {r['norm_vitk']:.2e} "
              f"||torch|| {r['norm_ref']:.2e}")
    print(f"time: vitk {t_vitk:.1f}s (process incl. eval), torch {t_ref:.1f}s")
    return loss_ok, param_ok


QKV_PARTS = ("q", "k", "v")


def param_differences(vitk_params, ref_params, d, outliers):
    """One dict per tensor, with qkv weight and bias split into their q, k, v rows ([0,D),
    [D,2D), [2D,3D)) so that one part cannot hide another:
      full     ||a - b|| / ||b||
      trimmed  the same without the `outliers` elements of largest |a - b|
      top      those elements (flat index within the part, |a - b|)
      offset   flat offset of the part within its tensor."""
    rows = []
    for name, ref in ref_params.items():
        got = vitk_params[name].to(torch.float64)
        ref = ref.to(torch.float64)
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            cols = ref[0].numel() if ref.ndim > 1 else 1
            parts = [(f"{name}[{s}]", got[j * d : (j + 1) * d], ref[j * d : (j + 1) * d],
                      name.endswith("bias") and s == "k", j * d * cols)
                     for j, s in enumerate(QKV_PARTS)]
        else:
            parts = [(name, got, ref, False, 0)]
        for label, a, b, key_bias, offset in parts:
            diff = (a - b).reshape(-1).abs()
            ref_norm = b.norm().clamp_min(1e-30)
            k = min(outliers, diff.numel() - 1)
            top = torch.topk(diff, k) if k > 0 else None
            trimmed = diff.clone()
            if top is not None:
                trimmed[top.indices] = 0
            rows.append({
                "label": label,
                "full": (diff.norm() / ref_norm).item(),
                "trimmed": (trimmed.norm() / ref_norm).item(),
                "top": [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())),
                "offset": offset,
                "key_bias": key_bias,
                "norm_vitk": a.norm().item(),
                "norm_ref": b.norm().item(),
            })
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vitk", default=None,
                   help="vitk binary [default: target/release/vitk of this checkout]")
    p.add_argument("--work", default=None, help="work directory [default: a temporary one]")
    p.add_argument("--cases", default="micro-cls,micro-mean,seed-cls,seed-mean",
                   help="comma-separated MODEL-POOL cases (models: micro, seed)")
    p.add_argument("--steps", type=int, default=20, help="steps of the micro cases")
    p.add_argument("--seed-steps", type=int, default=5, help="steps of the seed cases")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train", type=int, default=1024, help="synthetic training images")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="threads for vitk and torch")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the initial weights")
    p.add_argument("--attn", choices=["math", "sdpa"], default="math",
                   help="reference attention: explicit math or F.scaled_dot_product_attention")
    p.add_argument("--tol", type=float, default=1e-4, help="max relative loss difference")
    # 1e-4: healthy runs stay below ~4e-5 (trimmed ~1e-5), while a single setting off, such
    # as weight decay on pos_embed, shows up around 1e-3 after 20 micro steps.
    p.add_argument("--param-tol", type=float, default=1e-4,
                   help="max norm-wise relative difference of the final parameters "
                        "(trimmed of --outliers elements)")
    p.add_argument("--outliers", type=int, default=3,
                   help="largest element differences per tensor left out of the trimmed check")
    p.add_argument("--show-params", type=int, default=8, help="worst tensors to list")
    args = p.parse_args()

    root = Path(__file__).resolve().parent.parent
    args.vitk = args.vitk or str(root / "target" / "release" / "vitk")
    if not os.access(args.vitk, os.X_OK):
        print(f"vitk binary not found at {args.vitk}: run `cargo build --release` "
              f"or pass --vitk", file=sys.stderr)
        sys.exit(2)

    cases = []
    for case in args.cases.split(","):
        model_name, _, pool = case.strip().partition("-")
        if model_name not in PRESETS or pool not in ("cls", "mean"):
            die(f"bad case '{case}': expected MODEL-POOL with MODEL in "
                f"{list(PRESETS)} and POOL in cls, mean")
        cases.append((case.strip(), model_name, pool))

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    # fp32 everywhere: no TF32 or reduced-precision reductions (they only matter on a GPU,
    # but state them so the reference is unambiguous).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    workdir = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vitk-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    have = sum(f.stat().st_size for f in data_dir.glob("data_batch_*.bin")) // RECORD \
        if data_dir.is_dir() else 0
    if have != args.train:  # (re)write the synthetic set unless a matching one is there
        run([args.vitk, "synth", "--out", str(data_dir), "--train", str(args.train),
             "--val", "256", "--force"], workdir / "synth.log")
    images, labels = read_cifar_dir(data_dir)

    print(f"vitk vs reference numerics: torch {torch.__version__}, timm {timm.__version__}, "
          f"{args.threads} threads, attention path: "
          f"{'explicit math (fused_attn=False)' if args.attn == 'math' else 'F.scaled_dot_product_attention'}")
    print(f"data: {data_dir} ({images.shape[0]} training records), work dir {workdir}")

    results = []
    for case, model_name, pool in cases:
        steps = args.steps if model_name == "micro" else args.seed_steps
        if steps * args.batch_size > images.shape[0]:
            print(f"note: {steps} steps of {args.batch_size} run past one epoch "
                  f"({images.shape[0]} records); both sides restart at batch 0")
        results.append((case, compare_case(args, str(data_dir), images, labels, workdir,
                                           model_name, pool, steps)))

    print("\nsummary:")
    verdict = {True: "PASS", False: "FAIL"}
    for case, (loss_ok, param_ok) in results:
        print(f"  {case:<12} losses {verdict[loss_ok]}, final parameters {verdict[param_ok]}")
    sys.exit(0 if all(a and b for _, (a, b) in results) else 1)


if __name__ == "__main__":
    main()
