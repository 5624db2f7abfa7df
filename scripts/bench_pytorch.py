#!/usr/bin/env python3
"""Training speed of vitk side by side with the PyTorch/timm reference, on the CPU or a GPU.

CPU mode (the default, `--device cpu`): for each model (default: the `seed` preset D256 L6 H8
M1024, and D192 L6 H3 M768; all models are patch 4, 32x32 input, 10 classes, cls pooling) at
batch 128 with the same thread count, this script alternates runs (vitk, torch, vitk, torch,
...) so that load from other processes falls on both sides alike, each under
`/usr/bin/time -v` for its peak RSS:

  vitk:  vitk train --data SYNTH --model seed [--embed-dim ...] --batch-size 128
             --steps WARMUP+N --no-augment --no-shuffle --threads T
  torch: this script in --worker mode: the reference VisionTransformer, fp32, AdamW
         (same param groups as vitk), label-smoothed cross-entropy, WARMUP+N steps on the
         same batches, torch.set_num_threads(T).

Throughput on both sides = images / seconds over the N steps after the WARMUP first ones,
timing only the training steps (forward, backward, optimizer): vitk's per-step img_per_s
from RUN_DIR/metrics.jsonl (the time between two steps' ends; its loader prepares batches on
a background thread), and the
same span in the worker (batches normalised before the clock starts). vitk's own `final:`
figure, which leaves out only its first step, is shown too.

GPU mode (`--device cuda[:N]`): for each model (default `seed`; `small` D384 L7 H12 M384 on
request) and batch size (default 128 and 512), one process per measurement, in this order:

  vitk:  vitk train --device cuda --precision bf16, then --precision fp32 (same flags as above,
         no --threads);
  torch: the reference on the GPU in three variants: eager fp32, eager with
         torch.autocast("cuda", dtype=torch.bfloat16), and torch.compile + the same autocast.
         Fused AdamW (--adamw), same hyper-parameters and parameter groups as vitk,
         label-smoothed cross-entropy; the synthetic batches are normalised and copied to the
         GPU before anything is timed, so no loader is measured. After WARMUP steps
         (--compile-warmup for torch.compile, whose compilation happens in the first step and
         is reported separately), N steps run back to back and are timed with CUDA events.

vitk's figure is again its per-step img_per_s over the steps after WARMUP: the time between two
consecutive steps' ends, which includes the upload of each batch (from pinned memory, one step
ahead) and the read-back of each loss (one step late), which the PyTorch side does not do. The table gives img/s of every cell and the ratios vitk/PyTorch for each pair of
the same precision. fp32 matmuls stay IEEE fp32 on the PyTorch side unless --tf32.

The reference is timm's VisionTransformer when timm can be imported, else (or with
--impl twin) `TwinViT` below: the same model in plain PyTorch with timm's parameter names.
`--check-twin` proves the two equal on the CPU: the same state dict loaded into both (strictly,
both ways), forward outputs and every gradient compared in fp32.

  dry run of the GPU code path without a GPU (PyTorch on the CPU, vitk on its emulator):
    bench_pytorch.py --device cuda --torch-device cpu --vitk-device emu --models micro \\
        --batch-sizes 8,16 --steps 2 --warmup 1 --compile-warmup 2

The reference is only used here, never by vitk, its tests or its CI. Run the CPU mode through
scripts/bench-vs-pytorch.sh; the GPU bundle's run.sh runs the GPU mode. Speed numbers on a
shared machine are noisy: the load average before and after is printed with the CPU table.

Exit status: 0 when every measurement (or check) succeeded, 1 when one failed (the table is
still printed), 2 on a setup error.
"""

import argparse
import contextlib
import json
import math
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

# name -> (D, L, H, M); vitk gets each shape as the seed preset with overrides.
MODELS = {
    "seed": (256, 6, 8, 1024),
    "d192": (192, 6, 3, 768),
    "small": (384, 7, 12, 384),
    "micro": (64, 4, 4, 128),
}

# The PyTorch variants of the GPU mode: name -> (torch.compile?, precision).
VARIANTS = {
    "eager-fp32": (False, "fp32"),
    "eager-bf16": (False, "bf16"),
    "compile-bf16": (True, "bf16"),
    "compile-fp32": (True, "fp32"),
}
VITK_PRECISIONS = ("bf16", "fp32")
# Distinct batches the GPU worker keeps on the device.
DEVICE_BATCHES = 8

# AdamW and loss, as vitk's defaults (src/optim.rs, src/cli/train.rs).
LR, BETAS, EPS, WEIGHT_DECAY, LABEL_SMOOTHING = 1e-3, (0.9, 0.999), 1e-8, 0.05, 0.1


def die(msg):
    """A setup error: message on stderr, exit status 2."""
    print(msg, file=sys.stderr)
    sys.exit(2)


def dims_label(model):
    d, depth, heads, mlp = MODELS[model]
    return f"D{d} L{depth} H{heads} M{mlp}"


# ----------------------------------------------------------------------------- reference


def make_twin_classes():
    """Defines the plain-PyTorch twin of timm's VisionTransformer (imports torch lazily, so
    that the driver, which never imports torch, starts fast and works without it)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        """timm's Attention: fused qkv with bias, heads split as (3, B, H, T, hd), SDPA or the
        explicit math path (`fused_attn`, as timm's attribute), then `proj`."""

        def __init__(self, dim, num_heads):
            super().__init__()
            assert dim % num_heads == 0, "dim should be divisible by num_heads"
            self.num_heads = num_heads
            self.head_dim = dim // num_heads
            self.scale = self.head_dim ** -0.5
            self.fused_attn = True
            self.qkv = nn.Linear(dim, dim * 3, bias=True)
            self.attn_drop = nn.Dropout(0.0)
            self.proj = nn.Linear(dim, dim)
            self.proj_drop = nn.Dropout(0.0)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            if self.fused_attn:
                x = F.scaled_dot_product_attention(
                    q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
            else:
                q = q * self.scale
                attn = q @ k.transpose(-2, -1)
                attn = attn.softmax(dim=-1)
                attn = self.attn_drop(attn)
                x = attn @ v
            x = x.transpose(1, 2).reshape(B, N, C)
            x = self.proj(x)
            return self.proj_drop(x)

    class Mlp(nn.Module):
        """timm's Mlp: fc1, exact GELU, fc2."""

        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.drop1 = nn.Dropout(0.0)
            self.fc2 = nn.Linear(hidden, dim)
            self.drop2 = nn.Dropout(0.0)

        def forward(self, x):
            return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))

    class Block(nn.Module):
        """timm's pre-LN Block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6."""

        def __init__(self, dim, num_heads, hidden):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention(dim, num_heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, hidden)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            x = x + self.mlp(self.norm2(x))
            return x

    class PatchEmbed(nn.Module):
        """timm's PatchEmbed: a PxP conv with stride P, then [B, D, S/P, S/P] -> [B, N, D]."""

        def __init__(self, img_size, patch_size, in_chans, dim):
            super().__init__()
            self.img_size = img_size
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

        def forward(self, x):
            assert x.shape[-2:] == (self.img_size, self.img_size), "input size mismatch"
            return self.proj(x).flatten(2).transpose(1, 2)

    class TwinViT(nn.Module):
        """timm's VisionTransformer as vitk configures it (class token, learned pos_embed
        covering it, pre-LN blocks, final `norm`, head on token 0, every dropout rate 0),
        with timm's module and parameter names, so either loads the other's state dict
        strictly. Initialisation follows timm's default: trunc_normal(0.02) Linear weights and
        pos_embed, zero Linear biases, normal(1e-6) cls_token, PyTorch's default for the conv
        and the LayerNorms."""

        def __init__(self, img_size, patch_size, in_chans, num_classes, embed_dim, depth,
                     num_heads, mlp_dim):
            super().__init__()
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.empty(1, self.patch_embed.num_patches + 1, embed_dim))
            self.pos_drop = nn.Dropout(0.0)
            self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_dim) for _ in range(depth)])
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head_drop = nn.Dropout(0.0)
            self.head = nn.Linear(embed_dim, num_classes)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

        def no_weight_decay(self):
            return {"pos_embed", "cls_token", "reg_token", "dist_token"}

        def forward(self, x):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.pos_drop(x + self.pos_embed)
            x = self.blocks(x)
            x = self.norm(x)
            return self.head(self.head_drop(x[:, 0]))

    return TwinViT


def timm_available():
    try:
        import timm
        return timm is not None
    except ImportError:
        return False


def build_timm(model):
    """timm's VisionTransformer for a MODELS entry (fp32, every dropout rate 0)."""
    from timm.models.vision_transformer import VisionTransformer

    d, depth, heads, mlp = MODELS[model]
    net = VisionTransformer(
        img_size=IMG, patch_size=PATCH, in_chans=CHANS, num_classes=CLASSES,
        embed_dim=d, depth=depth, num_heads=heads, mlp_ratio=mlp / d, qkv_bias=True,
        class_token=True, global_pool="token",
        drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        drop_path_rate=0.0,
    ).float()
    assert net.blocks[0].mlp.fc1.out_features == mlp, "mlp width mismatch"
    return net


def build_twin(model):
    d, depth, heads, mlp = MODELS[model]
    twin_cls = make_twin_classes()
    return twin_cls(IMG, PATCH, CHANS, CLASSES, d, depth, heads, mlp).float()


def build_reference(model, impl, attn):
    """(network, description): timm's when impl is 'timm' or 'auto' with timm importable, else
    the twin; attention through F.scaled_dot_product_attention (attn='sdpa') or explicit math."""
    net = None
    if impl in ("auto", "timm") and (impl == "timm" or timm_available()):
        import timm
        try:
            net, desc = build_timm(model), f"timm {timm.__version__} VisionTransformer"
        except (TypeError, AssertionError) as e:
            # An older timm without some of the keyword arguments: the twin is the same model.
            if impl == "timm":
                raise
            reason = f"timm {timm.__version__} cannot build it: {e}"
    else:
        reason = "timm cannot be imported" if impl == "auto" else "--impl twin"
    if net is None:
        net, desc = build_twin(model), f"the plain-PyTorch twin of timm's VisionTransformer ({reason})"
    for blk in net.blocks:
        blk.attn.fused_attn = attn == "sdpa"
    return net, desc


def make_optimizer(net, impl=None):
    """AdamW with vitk's hyper-parameters and parameter groups: no decay for 1-D tensors
    (biases, LayerNorm weights), pos_embed and cls_token. impl: None (PyTorch's default),
    'foreach' or 'fused'."""
    import torch

    skip = set(net.no_weight_decay())
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and n not in skip]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1 or n in skip]
    kw = {} if impl is None else {impl: True}
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": WEIGHT_DECAY}],
        lr=LR, betas=BETAS, eps=EPS, **kw,
    )


def load_batches(data_dir, n_records):
    """The first n_records training records of a CIFAR-10 binary directory, in file order,
    normalised: (float32 images [n, 3, 32, 32], int64 labels [n]) on the CPU."""
    import numpy as np
    import torch

    recs = np.concatenate([
        np.fromfile(p, dtype=np.uint8).reshape(-1, RECORD)
        for p in sorted(Path(data_dir).glob("data_batch_*.bin"))
    ])
    if recs.shape[0] < n_records:
        sys.exit(f"worker: {recs.shape[0]} records, need {n_records}")
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    std = torch.tensor(STD).view(1, -1, 1, 1)
    images = torch.from_numpy(recs[:n_records, 1:].copy()).reshape(-1, CHANS, IMG, IMG)
    images = (images.float() / 255.0 - mean) / std
    labels = torch.from_numpy(recs[:n_records, 0].astype(np.int64))
    return images, labels


# ----------------------------------------------------------------------------- CPU worker


def worker(args):
    """The torch side of the CPU mode: trains the reference model and prints one JSON line
    with the timing."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = build_reference(args.model, args.impl, args.attn)
    model.train()
    opt = make_optimizer(model)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)

    # Batches in file order from the synthetic set, normalised up front.
    total = args.warmup + args.steps
    bs = args.batch_size
    images, labels = load_batches(args.data, total * bs)

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


# ----------------------------------------------------------------------------- GPU worker


def gpu_worker(args):
    """The torch side of the GPU mode: one variant at one batch size. Prints one JSON line."""
    import torch

    dev = torch.device(args.torch_device)
    cuda = dev.type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            die(f"torch {torch.__version__} sees no CUDA device (built for CUDA "
                f"{torch.version.cuda}); use --torch-device cpu for a dry run")
        # The CUDA calls below want an index: "cuda" means the current device.
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # the patch-embedding conv has one shape
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    compiled, precision = VARIANTS[args.variant]
    bs = args.batch_size
    warmup = args.compile_warmup if compiled else args.warmup
    total = warmup + args.steps

    torch.manual_seed(0)
    net, desc = build_reference(args.model, args.impl, args.attn)
    net = net.to(dev).train()
    opt = make_optimizer(net, None if args.adamw == "default" else args.adamw)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    forward = net
    if compiled:
        forward = torch.compile(net, mode=None if args.compile_mode == "default" else args.compile_mode)
    if precision == "bf16":
        def amp():
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    else:
        amp = contextlib.nullcontext

    # The synthetic batches, normalised and on the device before any step, each its own
    # tensor (no views with offsets as inputs of the compiled model); the steps cycle through
    # at most DEVICE_BATCHES of them (their content does not change the speed).
    records = sum(f.stat().st_size for f in Path(args.data).glob("data_batch_*.bin")) // RECORD
    n_batches = min(total, records // bs, DEVICE_BATCHES)
    if n_batches < 1:
        die(f"worker: {args.data} holds fewer than {bs} records")
    images, labels = load_batches(args.data, n_batches * bs)
    images = [x.to(dev, copy=True) for x in images.view(n_batches, bs, CHANS, IMG, IMG).unbind(0)]
    labels = [y.to(dev, copy=True) for y in labels.view(n_batches, bs).unbind(0)]

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    # CUDA graphs (compile mode reduce-overhead) are told where each training step begins.
    mark_step = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    if not (compiled and args.compile_mode == "reduce-overhead"):
        mark_step = None

    def step(i):
        if mark_step:
            mark_step()
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = criterion(forward(images[i % n_batches]), labels[i % n_batches])
        loss.backward()
        opt.step()
        return loss

    # Warm-up: the first step alone (torch.compile compiles forward and backward in it; eager
    # mode pays cuDNN's and cuBLAS's first-use costs), then the rest of the warm-up.
    sync()
    t0 = time.perf_counter()
    step(0)
    sync()
    first_step_s = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    # N steps back to back, no host sync inside; an event at every step boundary.
    n = args.steps
    if cuda:
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    t0 = time.perf_counter()
    for i in range(n):
        if cuda:
            marks[i].record()
        loss = step(warmup + i)
    if cuda:
        marks[n].record()
    sync()
    wall_s = time.perf_counter() - t0
    if cuda:
        step_ms = [marks[i].elapsed_time(marks[i + 1]) for i in range(n)]
        timed_s = marks[0].elapsed_time(marks[n]) / 1000.0
    else:
        step_ms, timed_s = [wall_s * 1000.0 / n] * n, wall_s
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        die(f"worker: the training loss is {loss_value}")
    step_ms.sort()
    print(json.dumps({
        "img_per_s": bs * n / timed_s,
        "wall_img_per_s": bs * n / wall_s,
        "step_ms_median": step_ms[n // 2],
        "step_ms_min": step_ms[0],
        "step_ms_max": step_ms[-1],
        "first_step_s": first_step_s,
        "warmup_s": warmup_s,
        "warmup_steps": warmup,
        "peak_mem_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan"),
        "loss": loss_value,
        "reference": desc,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "fp32_matmul": torch.get_float32_matmul_precision(),
        "clock": "CUDA events" if cuda else "wall clock",
    }))


# ----------------------------------------------------------------------------- twin check


def check_twin(args):
    """The twin against timm on the CPU in fp32: parameter names and shapes, strict state-dict
    loads both ways, logits, the loss, and the gradients of every parameter and of the input
    after one backward of the label-smoothed cross-entropy. Both attention paths; both
    directions (timm's initial weights loaded into the twin, and the twin's into timm)."""
    try:
        import torch
        import timm
    except ImportError as e:
        die(f"--check-twin needs torch and timm: {e}")

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in (args.models or "seed,small").split(",")]
    for m in models:
        if m not in MODELS:
            die(f"unknown model '{m}', expected one of {list(MODELS)}")
    tol = args.twin_tol
    print(f"twin vs timm {timm.__version__} (torch {torch.__version__}) on the CPU, fp32: "
          f"batch {args.batch_size}, label-smoothed cross-entropy, one backward; "
          f"rel = ||twin - timm|| / ||timm|| (max over tensors), "
          f"max = max |twin - timm| / max |timm|; pass when rel <= {tol:g}")

    def rel(a, b):
        nb = b.double().norm().item()
        return (a.double() - b.double()).norm().item() / (nb if nb > 0 else 1.0)

    def max_rel(a, b):
        mb = b.double().abs().max().item()
        return (a.double() - b.double()).abs().max().item() / (mb if mb > 0 else 1.0)

    def run(net, x, y, attn):
        for blk in net.blocks:
            blk.attn.fused_attn = attn == "sdpa"
        net.train()
        net.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(True)
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
        return logits.detach(), loss.detach(), grads, x.grad.detach()

    failed = False
    print(f"\n{'model':<22} {'attn':<5} {'weights from':<13} {'logits rel':>11} {'max':>9} "
          f"{'loss rel':>9} {'grads rel':>10} {'max':>9} {'input grad':>11} {'verdict':>8}")
    for model in models:
        torch.manual_seed(0)
        ref = build_timm(model)
        torch.manual_seed(1)
        twin = build_twin(model)
        ref_shapes = {n: tuple(t.shape) for n, t in ref.state_dict().items()}
        twin_shapes = {n: tuple(t.shape) for n, t in twin.state_dict().items()}
        if ref_shapes != twin_shapes:
            print(f"{model}: state dicts differ: only timm {sorted(set(ref_shapes) - set(twin_shapes))}, "
                  f"only twin {sorted(set(twin_shapes) - set(ref_shapes))}, shapes "
                  f"{[n for n in ref_shapes if n in twin_shapes and ref_shapes[n] != twin_shapes[n]]}")
            failed = True
            continue
        n_params = sum(p.numel() for p in ref.parameters())
        g = torch.Generator().manual_seed(2)
        x = torch.randn(args.batch_size, CHANS, IMG, IMG, generator=g)
        y = torch.randint(0, CLASSES, (args.batch_size,), generator=g)
        timm_init = {k: v.clone() for k, v in ref.state_dict().items()}
        twin_init = {k: v.clone() for k, v in twin.state_dict().items()}
        for source, state in (("timm", timm_init), ("twin", twin_init)):
            ref.load_state_dict(state, strict=True)
            twin.load_state_dict(state, strict=True)
            for attn in ("sdpa", "math"):
                lr_, lo_, gr_, xg_ = run(ref, x, y, attn)
                lt, lot, grt, xgt = run(twin, x, y, attn)
                r_logits, m_logits = rel(lt, lr_), max_rel(lt, lr_)
                r_loss = abs(lot.item() - lo_.item()) / abs(lo_.item())
                r_grads = max(rel(grt[n], gr_[n]) for n in gr_)
                m_grads = max(max_rel(grt[n], gr_[n]) for n in gr_)
                worst = max(gr_, key=lambda n: rel(grt[n], gr_[n]))
                r_x = rel(xgt, xg_)
                ok = max(r_logits, r_loss, r_grads, r_x) <= tol
                failed |= not ok
                print(f"{model + ' ' + dims_label(model):<22} {attn:<5} {source:<13} "
                      f"{r_logits:>11.2e} {m_logits:>9.2e} {r_loss:>9.2e} {r_grads:>10.2e} "
                      f"{m_grads:>9.2e} {r_x:>11.2e} {'ok' if ok else 'FAIL':>8}")
                if r_grads > tol:
                    print(f"{'':<22} largest gradient difference: {worst}")
        print(f"{'':<22} {len(ref_shapes)} tensors, {n_params} parameters, same names and shapes")
    print("\ntwin check " + ("FAILED" if failed else "passed"))
    sys.exit(1 if failed else 0)


# ----------------------------------------------------------------------------- CPU driver


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


def vitk_train_cmd(args, model, data_dir, run_dir, batch_size):
    """vitk train for a MODELS entry on the synthetic set, in file order, constant LR."""
    d, depth, heads, mlp = MODELS[model]
    return [args.vitk, "train", "--data", str(data_dir), "--model", "seed",
            "--embed-dim", str(d), "--depth", str(depth), "--num-heads", str(heads),
            "--mlp-dim", str(mlp), "--batch-size", str(batch_size),
            "--steps", str(args.warmup + args.steps), "--no-augment", "--no-shuffle",
            "--schedule", "constant", "--warmup-epochs", "0", "--out", str(run_dir)]


def vitk_img_per_s(run_dir, warmup, batch_size):
    """vitk's per-step img_per_s over the steps after the warm-up: (img/s, timed steps)."""
    steps = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    steps = [r for r in steps if r.get("kind") == "step"]
    timed = steps[warmup:]
    if not timed:
        raise RuntimeError(f"{run_dir}/metrics.jsonl: {len(steps)} steps, none after the warm-up")
    secs = sum(batch_size / r["img_per_s"] for r in timed)
    return batch_size * len(timed) / secs, len(timed)


def run_vitk(args, model, data_dir, run_dir):
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = vitk_train_cmd(args, model, data_dir, run_dir, args.batch_size)
    cmd += ["--threads", str(args.threads)]
    out, _, rss = timed_run(cmd)
    img_per_s, _ = vitk_img_per_s(run_dir, args.warmup, args.batch_size)
    m = re.search(r"img_per_s=([0-9.]+)", out.strip().splitlines()[-1])
    return {
        "img_per_s": img_per_s,
        "final_img_per_s": float(m.group(1)) if m else float("nan"),
        "rss": rss,
    }


def run_torch(args, model, data_dir):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
           "--data", str(data_dir), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--attn", args.attn, "--impl", args.impl]
    out, _, rss = timed_run(cmd, env)
    res = json.loads(out.strip().splitlines()[-1])
    res["rss"] = rss
    return res


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def synth_data(args, data_dir, need):
    """Writes (or reuses) a synthetic set of at least `need` training records."""
    have = sum(f.stat().st_size for f in data_dir.glob("data_batch_*.bin")) // RECORD \
        if data_dir.is_dir() else 0
    if have < need:
        proc = subprocess.run([args.vitk, "synth", "--out", str(data_dir), "--train", str(need),
                               "--val", "256", "--force"], capture_output=True, text=True)
        if proc.returncode != 0:
            die(f"vitk synth failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def cpu_main(args, models, workdir):
    if not os.access("/usr/bin/time", os.X_OK):
        die("/usr/bin/time not found (GNU time; Debian/Ubuntu: apt-get install time)")
    data_dir = workdir / "data"
    synth_data(args, data_dir, args.batch_size * (args.warmup + args.steps))

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
        results[model] = (dims_label(model),) + runs[model]

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


# ----------------------------------------------------------------------------- GPU driver


def tail(text, n=25):
    return "\n".join("    " + line for line in text.strip().splitlines()[-n:])


def gpu_run_vitk(args, model, bs, precision, data_dir, run_dir):
    """One vitk measurement: {'img_per_s', 'engine'} or {'error'}."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = vitk_train_cmd(args, model, data_dir, run_dir, bs)
    cmd += ["--device", args.vitk_device, "--precision", precision]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.cell_timeout} s: {' '.join(cmd)}"}
    try:
        if proc.returncode != 0:
            return {"error": f"exit status {proc.returncode}: {' '.join(cmd)}\n"
                             f"{tail(proc.stdout + proc.stderr)}"}
        img_per_s, n = vitk_img_per_s(run_dir, args.warmup, bs)
        # vitk's first line: "model ... on ENGINE; train N images, ..."
        m = re.search(r" on (.*?); train ", proc.stdout)
        return {"img_per_s": img_per_s, "steps": n, "engine": m.group(1) if m else "?"}
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        return {"error": f"{e}\n{tail(proc.stdout + proc.stderr)}"}
    finally:
        # The checkpoints of a run are tens of MiB; only metrics.jsonl was needed.
        shutil.rmtree(run_dir, ignore_errors=True)


def gpu_run_torch(args, model, bs, variant, data_dir):
    """One PyTorch measurement in its own process: the worker's JSON or {'error'}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--gpu-worker", "--model", model,
           "--variant", variant, "--data", str(data_dir), "--batch-size", str(bs),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--compile-warmup", str(args.compile_warmup), "--compile-mode", args.compile_mode,
           "--torch-device", args.torch_device, "--adamw", args.adamw, "--attn", args.attn,
           "--impl", args.impl] + (["--tf32"] if args.tf32 else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.cell_timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit status {proc.returncode}\n{tail(proc.stdout + proc.stderr)}"}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"error": f"no result line\n{tail(proc.stdout + proc.stderr)}"}


def gpu_main(args, models, workdir):
    batch_sizes = parse_ints(args.batch_sizes, "--batch-sizes")
    variants = parse_list(args.torch_variants, VARIANTS, "--torch-variants")
    precisions = parse_list(args.vitk_precisions, VITK_PRECISIONS, "--vitk-precisions")
    if args.compile_warmup < 1 or args.warmup < 1 or args.steps < 1:
        die("--steps, --warmup and --compile-warmup must be at least 1")
    data_dir = workdir / "data"
    synth_data(args, data_dir, max(batch_sizes) * (args.warmup + args.steps))

    t_start = time.time()
    deadline = t_start + args.max_minutes * 60
    print(f"vitk vs PyTorch training speed on the GPU: vitk on --device {args.vitk_device} "
          f"({', '.join(precisions)}), PyTorch on {args.torch_device} "
          f"({', '.join(variants)}); batch sizes {', '.join(map(str, batch_sizes))}; "
          f"{args.warmup} warm-up steps ({args.compile_warmup} for torch.compile) + "
          f"{args.steps} timed steps; AdamW: {args.adamw}; reference attention: "
          f"{'F.scaled_dot_product_attention' if args.attn == 'sdpa' else 'explicit math'}",
          flush=True)

    # cells[(model, bs)] = {"vitk bf16": result, ..., "eager-fp32": result, ...}
    cells = {}
    group_secs = 0.0
    skipped = []
    for model in models:
        for bs in batch_sizes:
            if cells and time.time() + group_secs > deadline:
                skipped.append(f"{model} batch {bs}")
                continue
            t0 = time.time()
            row = cells.setdefault((model, bs), {})
            for p in precisions:
                r = gpu_run_vitk(args, model, bs, p, data_dir, workdir / f"run-{model}-{bs}-{p}")
                row[f"vitk {p}"] = r
                if "error" in r:
                    print(f"  {model} batch {bs} vitk {p}: FAILED {r['error']}", flush=True)
                else:
                    print(f"  {model} batch {bs} vitk {p}: {r['img_per_s']:9.1f} img/s "
                          f"({r['engine']})", flush=True)
            for v in variants:
                r = gpu_run_torch(args, model, bs, v, data_dir)
                row[v] = r
                if "error" in r:
                    print(f"  {model} batch {bs} torch {v}: FAILED {r['error']}", flush=True)
                else:
                    mem = (f"; peak memory {r['peak_mem_mib']:.0f} MiB"
                           if math.isfinite(r["peak_mem_mib"]) else "")
                    print(f"  {model} batch {bs} torch {v}: {r['img_per_s']:9.1f} img/s "
                          f"(step median {r['step_ms_median']:.2f} ms, max "
                          f"{r['step_ms_max']:.2f} ms; first step {r['first_step_s']:.1f} s{mem})",
                          flush=True)
            group_secs = max(group_secs, time.time() - t0)

    # Header facts from the first successful PyTorch cell.
    info = next((r for row in cells.values() for k, r in row.items()
                 if not k.startswith("vitk") and "error" not in r), None)
    engines = sorted({r["engine"] for row in cells.values() for k, r in row.items()
                      if k.startswith("vitk") and "error" not in r})
    cols = [f"vitk {p}" for p in precisions] + variants
    pairs = [(f"vitk {p}", v) for p in precisions for v in variants if VARIANTS[v][1] == p]

    def fmt(r, w):
        if "error" in r:
            return f"{'failed':>{w}}"
        return f"{r['img_per_s']:>{w}.{0 if r['img_per_s'] >= 100 else 1}f}"

    print("\nimg/s side by side")
    if info:
        print(f"PyTorch {info['torch']} on {info['device']}, reference: {info['reference']}; "
              f"fp32 matmul precision '{info['fp32_matmul']}'")
    for e in engines:
        print(f"vitk engine: {e}")
    print(f"{'model':<22} {'batch':>5} " + " ".join(f"{c:>13}" for c in cols))
    for (model, bs), row in cells.items():
        print(f"{model + ' ' + dims_label(model):<22} {bs:>5} " + " ".join(fmt(row[c], 13) for c in cols))
    print("\nvitk/PyTorch (same precision; > 1: vitk is faster)")
    print(f"{'model':<22} {'batch':>5} " + " ".join(f"{a + ' / ' + b:>25}" for a, b in pairs))
    for (model, bs), row in cells.items():
        ratios = []
        for a, b in pairs:
            ra, rb = row[a], row[b]
            ok = "error" not in ra and "error" not in rb
            ratios.append(f"{ra['img_per_s'] / rb['img_per_s']:>25.2f}" if ok else f"{'-':>25}")
        print(f"{model + ' ' + dims_label(model):<22} {bs:>5} " + " ".join(ratios))
    compile_lines = []
    for (model, bs), row in cells.items():
        for v in variants:
            r = row[v]
            if VARIANTS[v][0] and "error" not in r:
                compile_lines.append(
                    f"  {model} batch {bs} {v}: first step {r['first_step_s']:.1f} s "
                    f"(compilation; a step takes {r['step_ms_median']:.1f} ms after it), "
                    f"warm-up of {r['warmup_steps']} steps {r['warmup_s']:.1f} s")
    if compile_lines:
        print("\ntorch.compile time (not in the img/s figures; the first compilation on a machine "
              "is the slowest, later ones reuse PyTorch's on-disk caches):")
        print("\n".join(compile_lines))
    print(f"\nvitk: its per-step img_per_s (RUN_DIR/metrics.jsonl) over the {args.steps} steps "
          f"after {args.warmup} warm-up steps; each vitk step includes the host-side upload of "
          f"its batch and the read-back of the loss.")
    clock = info["clock"] if info else "CUDA events"
    print(f"PyTorch: {args.steps} steps back to back after the warm-up, on batches already on "
          f"the device, timed with {clock} (no host sync inside); AdamW {args.adamw}, "
          f"label-smoothed cross-entropy, the same hyper-parameters and parameter groups.")
    if skipped:
        print(f"skipped (past --max-minutes {args.max_minutes:g}): {', '.join(skipped)}")
    failures = [f"{model} batch {bs} {k}" for (model, bs), row in cells.items()
                for k, r in row.items() if "error" in r]
    if failures:
        print(f"FAILED: {', '.join(failures)} (the reasons are above)")
    print(f"total time {time.time() - t_start:.0f} s")
    return 1 if failures else 0


# ----------------------------------------------------------------------------- main


def parse_list(text, allowed, flag):
    items = [s.strip() for s in text.split(",") if s.strip()]
    for s in items:
        if s not in allowed:
            die(f"{flag}: unknown '{s}', expected some of {', '.join(allowed)}")
    if not items:
        die(f"{flag}: empty list")
    return items


def parse_ints(text, flag):
    try:
        items = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        die(f"{flag}: expected comma-separated integers, got '{text}'")
    if not items or min(items) < 1:
        die(f"{flag}: expected positive integers, got '{text}'")
    return items


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="See the module docstring (head -60 scripts/bench_pytorch.py) for what is measured.")
    p.add_argument("--device", default="cpu",
                   help="cpu: the CPU side by side (the default); cuda or cuda:N: the GPU side by side")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run (N) [default: 8 on the CPU, 50 on the GPU]")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed first steps per run [default: 2 on the CPU, 10 on the GPU]")
    p.add_argument("--reps", type=int, default=2, help="CPU: runs per side and model, interleaved")
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="skip further interleaved runs (CPU) or model/batch groups (GPU) that "
                        "would end after this [default: 9]")
    p.add_argument("--batch-size", type=int, default=None,
                   help="CPU mode and --check-twin: the batch size [default: 128; twin check: 8]")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both sides [default: 2]")
    p.add_argument("--models", default=None,
                   help=f"comma-separated, of {list(MODELS)} [default: seed,d192 on the CPU, "
                        f"seed on the GPU, seed,small for --check-twin]")
    p.add_argument("--attn", choices=["sdpa", "math"], default="sdpa",
                   help="reference attention: F.scaled_dot_product_attention (its default) "
                        "or the explicit math path")
    p.add_argument("--impl", choices=["auto", "timm", "twin"], default="auto",
                   help="the reference: timm's VisionTransformer, or its plain-PyTorch twin in "
                        "this script [default: auto, timm when it can be imported]")
    p.add_argument("--vitk", default=None, help="vitk binary [default: target/release/vitk]")
    p.add_argument("--work", default=None,
                   help="work directory [default: a temporary one, removed at the end]")
    g = p.add_argument_group("GPU mode")
    g.add_argument("--batch-sizes", default="128,512", help="comma-separated [default: 128,512]")
    g.add_argument("--torch-variants", default="eager-fp32,eager-bf16,compile-bf16",
                   help=f"comma-separated, of {list(VARIANTS)} [default: eager-fp32,eager-bf16,"
                        f"compile-bf16]")
    g.add_argument("--vitk-precisions", default="bf16,fp32",
                   help="comma-separated --precision values for vitk [default: bf16,fp32]")
    g.add_argument("--compile-warmup", type=int, default=20,
                   help="untimed first steps of the torch.compile variants, compilation "
                        "included [default: 20]")
    g.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"],
                   help="torch.compile mode [default: default]")
    g.add_argument("--adamw", choices=["fused", "foreach", "default"], default="fused",
                   help="PyTorch's AdamW implementation [default: fused]")
    g.add_argument("--tf32", action="store_true",
                   help="let PyTorch's fp32 matmuls use TF32 (set_float32_matmul_precision('high'))")
    g.add_argument("--cell-timeout", type=int, default=900,
                   help="seconds after which one measurement is abandoned [default: 900]")
    g.add_argument("--torch-device", default=None,
                   help="PyTorch's device [default: --device]; cpu for a dry run without a GPU")
    g.add_argument("--vitk-device", default=None,
                   help="vitk's --device [default: --device]; emu for a dry run without a GPU")
    c = p.add_argument_group("twin check")
    c.add_argument("--check-twin", action="store_true",
                   help="check on the CPU that the twin equals timm's VisionTransformer "
                        "(forward and gradients, fp32), then exit")
    c.add_argument("--twin-tol", type=float, default=1e-6,
                   help="largest relative difference accepted [default: 1e-6]")
    # worker modes (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gpu-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="seed", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="eager-fp32", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    gpu = args.device.startswith("cuda") or args.gpu_worker
    if not (args.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", args.device)):
        die(f"--device {args.device}: expected cpu, cuda or cuda:N")
    if args.steps is None:
        args.steps = 50 if gpu else 8
    if args.warmup is None:
        args.warmup = 10 if gpu else 2
    if args.batch_size is None:
        args.batch_size = 8 if args.check_twin else 128
    args.torch_device = args.torch_device or args.device
    args.vitk_device = args.vitk_device or args.device

    if args.worker:
        worker(args)
        return
    if args.gpu_worker:
        gpu_worker(args)
        return
    if args.check_twin:
        check_twin(args)
        return

    root = Path(__file__).resolve().parent.parent
    args.vitk = args.vitk or str(root / "target" / "release" / "vitk")
    if not os.access(args.vitk, os.X_OK):
        die(f"vitk binary not found at {args.vitk}: run `cargo build --release` or pass --vitk")
    models = [m.strip() for m in (args.models or ("seed" if gpu else "seed,d192")).split(",")]
    for m in models:
        if m not in MODELS:
            die(f"unknown model '{m}', expected one of {list(MODELS)}")

    temporary = args.work is None
    workdir = Path(tempfile.mkdtemp(prefix="vitk-bench-")) if temporary else Path(args.work)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if gpu:
            status = gpu_main(args, models, workdir)
        else:
            cpu_main(args, models, workdir)
            status = 0
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
