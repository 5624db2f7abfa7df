#!/usr/bin/env python3
"""Training speed and peak memory of vitk side by side with the PyTorch/timm reference.

For each model (default: the `seed` preset D256 L6 H8 M1024, and D192 L6 H3 M768; both
patch 4, 32x32 input, 10 classes, cls pooling) at batch 128 on the CPU with the same thread
count, this script alternates runs (vitk, torch, vitk, torch, ...) so that load from other
processes falls on both sides alike, each under `/usr/bin/time -v` for its peak RSS:

  vitk:  vitk train --data SYNTH --model seed [--embed-dim ...] --batch-size 128
             --steps WARMUP+N --no-augment --no-shuffle --threads T
  torch: this script in --worker mode: the reference VisionTransformer, fp32, AdamW
         (same param groups as vitk), label-smoothed cross-entropy, WARMUP+N steps on the
         same batches, torch.set_num_threads(T).

Throughput on both sides = images / seconds over the N steps after the WARMUP first ones,
timing only the training step (forward, backward, optimizer): vitk's per-step img_per_s
from RUN_DIR/metrics.jsonl (its loader prepares batches on a background thread), and the
same span in the worker (batches normalised before the clock starts). vitk's own `final:`
figure, which leaves out only its first step, is shown too.

The reference is only used here, never by vitk, its tests or its CI. Run it through
scripts/bench-vs-pytorch.sh. Speed numbers on a shared machine are noisy: the load average
before and after is printed with the table.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMG, PATCH, CHANS, CLASSES = 32, 4, 3, 10
RECORD = 1 + CHANS * IMG * IMG
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# name -> (D, L, H, M); vitk flags to get that shape from the seed preset.
MODELS = {
    "seed": (256, 6, 8, 1024),
    "d192": (192, 6, 3, 768),
}


# ----------------------------------------------------------------------------- worker


def worker(args):
    """The torch side: trains the reference model and prints one JSON line with the timing."""
    import numpy as np
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.set_num_threads(args.threads)
    d, depth, heads, mlp = MODELS[args.model]
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=IMG, patch_size=PATCH, in_chans=CHANS, num_classes=CLASSES,
        embed_dim=d, depth=depth, num_heads=heads, mlp_ratio=mlp / d, qkv_bias=True,
        class_token=True, global_pool="token",
        drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        drop_path_rate=0.0,
    ).float()
    for blk in model.blocks:
        blk.attn.fused_attn = args.attn == "sdpa"
    model.train()

    # The same parameter groups as vitk: no decay for 1-D tensors, pos_embed, cls_token.
    skip = set(model.no_weight_decay())
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in skip]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in skip]
    opt = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}],
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    # Batches in file order from the synthetic set, normalised up front.
    recs = np.concatenate([
        np.fromfile(p, dtype=np.uint8).reshape(-1, RECORD)
        for p in sorted(Path(args.data).glob("data_batch_*.bin"))
    ])
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    std = torch.tensor(STD).view(1, -1, 1, 1)
    total = args.warmup + args.steps
    bs = args.batch_size
    if recs.shape[0] < total * bs:
        sys.exit(f"worker: {recs.shape[0]} records, need {total * bs}")
    images = torch.from_numpy(recs[: total * bs, 1:].copy()).reshape(-1, CHANS, IMG, IMG)
    images = (images.float() / 255.0 - mean) / std
    labels = torch.from_numpy(recs[: total * bs, 0].astype(np.int64))

    step_secs = []
    for s in range(total):
        x, y = images[s * bs : (s + 1) * bs], labels[s * bs : (s + 1) * bs]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        loss_value = loss.item()  # also the sync point
        step_secs.append(time.perf_counter() - t0)
    timed = step_secs[args.warmup :]
    print(json.dumps({
        "img_per_s": bs * len(timed) / sum(timed),
        "step_secs": step_secs,
        "loss": loss_value,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


# ----------------------------------------------------------------------------- driver


def peak_rss_mib(time_output):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    return int(m.group(1)) / 1024 if m else float("nan")


def timed_run(cmd, env=None):
    """Runs cmd under /usr/bin/time -v; returns (stdout, stderr, peak RSS MiB)."""
    proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return proc.stdout, proc.stderr, peak_rss_mib(proc.stderr)


def run_vitk(args, model, data_dir, run_dir):
    d, depth, heads, mlp = MODELS[model]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [args.vitk, "train", "--data", str(data_dir), "--model", "seed",
           "--embed-dim", str(d), "--depth", str(depth), "--num-heads", str(heads),
           "--mlp-dim", str(mlp), "--batch-size", str(args.batch_size),
           "--steps", str(args.warmup + args.steps), "--no-augment", "--no-shuffle",
           "--schedule", "constant", "--warmup-epochs", "0",
           "--threads", str(args.threads), "--out", str(run_dir)]
    out, _, rss = timed_run(cmd)
    steps = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    steps = [r for r in steps if r.get("kind") == "step"]
    timed = steps[args.warmup :]
    secs = sum(args.batch_size / r["img_per_s"] for r in timed)
    m = re.search(r"img_per_s=([0-9.]+)", out.strip().splitlines()[-1])
    return {
        "img_per_s": args.batch_size * len(timed) / secs,
        "final_img_per_s": float(m.group(1)) if m else float("nan"),
        "rss": rss,
    }


def run_torch(args, model, data_dir):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
           "--data", str(data_dir), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--attn", args.attn]
    out, _, rss = timed_run(cmd, env)
    res = json.loads(out.strip().splitlines()[-1])
    res["rss"] = rss
    return res


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (N)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    p.add_argument("--reps", type=int, default=2, help="runs per side and model, interleaved")
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="skip further interleaved runs that would end after this [default: 9]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="seed,d192", help=f"comma-separated, of {list(MODELS)}")
    p.add_argument("--attn", choices=["sdpa", "math"], default="sdpa",
                   help="reference attention: F.scaled_dot_product_attention (its default) "
                        "or the explicit math path")
    p.add_argument("--vitk", default=None, help="vitk binary [default: target/release/vitk]")
    p.add_argument("--work", default=None, help="work directory [default: a temporary one]")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="seed", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        worker(args)
        return

    root = Path(__file__).resolve().parent.parent
    args.vitk = args.vitk or str(root / "target" / "release" / "vitk")
    if not os.access(args.vitk, os.X_OK):
        sys.exit(f"vitk binary not found at {args.vitk}: run `cargo build --release` or pass --vitk")
    if not os.access("/usr/bin/time", os.X_OK):
        sys.exit("/usr/bin/time not found (GNU time; Debian/Ubuntu: apt-get install time)")
    models = [m.strip() for m in args.models.split(",")]
    for m in models:
        if m not in MODELS:
            sys.exit(f"unknown model '{m}', expected one of {list(MODELS)}")

    workdir = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vitk-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    need = args.batch_size * (args.warmup + args.steps)
    have = sum(f.stat().st_size for f in data_dir.glob("data_batch_*.bin")) // RECORD \
        if data_dir.is_dir() else 0
    if have < need:
        subprocess.run([args.vitk, "synth", "--out", str(data_dir), "--train", str(need),
                        "--val", "256", "--force"], check=True, capture_output=True)

    t_start = time.time()
    load_before = uptime()
    print(f"vitk vs reference training speed: batch {args.batch_size}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.reps} interleaved runs per "
          f"side; reference attention: "
          f"{'F.scaled_dot_product_attention' if args.attn == 'sdpa' else 'explicit math'}")
    print(f"load before: {load_before}")

    # Rep-major order (rep 1 of every model, then rep 2, ...) so that a rep that would
    # overrun --max-minutes can be skipped whole, knowing how long each model took.
    runs = {m: ([], []) for m in models}
    pair_secs = {}
    deadline = t_start + args.max_minutes * 60
    for rep in range(args.reps):
        if rep > 0 and time.time() + sum(pair_secs.values()) > deadline:
            print(f"  skipping runs {rep + 1}..{args.reps}: they would end past "
                  f"--max-minutes {args.max_minutes:g}")
            break
        for model in models:
            t0 = time.time()
            v = run_vitk(args, model, data_dir, workdir / f"{model}-run{rep}")
            print(f"  {model} run {rep + 1} vitk : {v['img_per_s']:7.1f} img/s "
                  f"(vitk final line {v['final_img_per_s']:.1f}), peak RSS {v['rss']:.0f} MiB",
                  flush=True)
            t = run_torch(args, model, data_dir)
            print(f"  {model} run {rep + 1} torch: {t['img_per_s']:7.1f} img/s, "
                  f"peak RSS {t['rss']:.0f} MiB", flush=True)
            runs[model][0].append(v)
            runs[model][1].append(t)
            pair_secs[model] = time.time() - t0
    results = {}
    for model in models:
        d, depth, heads, mlp = MODELS[model]
        results[model] = (f"D{d} L{depth} H{heads} M{mlp}",) + runs[model]

    # Memory floor of the reference process: importing torch and timm, no model.
    _, _, torch_floor = timed_run([sys.executable, "-c",
                                   "import torch, timm, numpy; torch.set_num_threads(1)"])
    load_after = uptime()

    def mean(xs):
        return sum(xs) / len(xs)

    print()
    print(f"{'model':<20} {'vitk img/s':>11} {'torch img/s':>12} {'vitk/torch':>11} "
          f"{'vitk RSS':>10} {'torch RSS':>10}")
    for model in models:
        label, vr, tr = results[model]
        vi, ti = mean([r["img_per_s"] for r in vr]), mean([r["img_per_s"] for r in tr])
        print(f"{label:<20} {vi:>11.1f} {ti:>12.1f} {vi / ti:>11.2f} "
              f"{max(r['rss'] for r in vr):>7.0f} MiB {max(r['rss'] for r in tr):>6.0f} MiB")
    # Each vitk run and the torch run right after it saw about the same load: their ratio
    # is steadier than the ratio of the means when the load changes between pairs.
    for model in models:
        label, vr, tr = results[model]
        pairs = ", ".join(f"{v['img_per_s'] / t['img_per_s']:.2f}" for v, t in zip(vr, tr))
        print(f"{label:<20} vitk/torch per interleaved pair: {pairs}")
    n_runs = len(next(iter(runs.values()))[0])
    print(f"\nimg/s: mean over {n_runs} runs, each images/second over its {args.steps} timed "
          f"steps; RSS: the largest peak over the runs.")
    print(f"the reference process holds {torch_floor:.0f} MiB after importing torch and timm alone.")
    print(f"load before: {load_before}")
    print(f"load after:  {load_after}")
    print(f"(the machine is shared: other processes' load makes these numbers noisy)")
    print(f"total time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
