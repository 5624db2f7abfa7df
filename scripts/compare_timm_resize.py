#!/usr/bin/env python3
"""A vitk checkpoint run at another input size, side by side with timm loading it there.

    python3 scripts/compare_timm_resize.py --vitk target/release/vitk \
        --checkpoint runs/run-1/model.safetensors --image-size 48 [--images 8]

timm: `create_model(img_size=S, ...)` with the checkpoint's shape, weights through timm's own
`checkpoint_filter_fn` (which resamples pos_embed to the new grid). vitk: `vitk predict
--image-size S --top K` (which resamples with vitk's code). Both see the same random images,
written as PNGs of exactly S x S so that no resize happens; the class probabilities must agree
to within --tol (vitk prints four decimals). The reference (torch, timm, safetensors) is never a
dependency of vitk, its tests or its CI.

Exit status: 0 on agreement, 1 on a difference, 2 on a setup error.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from timm.models.vision_transformer import checkpoint_filter_fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vitk", required=True, help="the vitk binary")
    ap.add_argument("--checkpoint", required=True, help="a model.safetensors written by vitk")
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--tol", type=float, default=2e-4)
    a = ap.parse_args()

    with safe_open(a.checkpoint, "pt") as f:
        meta = f.metadata() or {}
    if "vitk.config" not in meta:
        print(f"error: {a.checkpoint} has no vitk metadata", file=sys.stderr)
        return 2
    cfg = json.loads(meta["vitk.config"])
    norm = json.loads(meta["vitk.normalize"])
    if isinstance(cfg["image_size"], list) or cfg["in_chans"] != 3:
        print("error: this check takes square RGB checkpoints (timm assumes a square grid)",
              file=sys.stderr)
        return 2
    cls = cfg["pool"] == "cls"
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=a.image_size,
        patch_size=cfg["patch_size"], num_classes=cfg["num_classes"],
        embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_dim"] / cfg["embed_dim"],
        class_token=cls, global_pool="token" if cls else "avg",
    )
    model.load_state_dict(checkpoint_filter_fn(load_file(a.checkpoint), model))
    model.eval()

    rng = np.random.default_rng(0)
    k = cfg["num_classes"]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        batch = []
        for i in range(a.images):
            img = rng.integers(0, 256, (a.image_size, a.image_size, 3), dtype=np.uint8)
            path = Path(tmp) / f"img{i}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
            x = (img.astype(np.float32) / 255.0 - np.array(norm["mean"], np.float32)) / np.array(
                norm["std"], np.float32)
            batch.append(x.transpose(2, 0, 1))
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(np.stack(batch))), dim=-1).numpy()
        out = subprocess.run(
            [a.vitk, "predict", "--checkpoint", a.checkpoint, "--image-size", str(a.image_size),
             "--device", "cpu", "--top", str(k)] + [str(p) for p in paths],
            capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stdout + out.stderr, file=sys.stderr)
            return 2
        print(out.stderr.strip())
        with safe_open(a.checkpoint, "pt") as f:
            classes = json.loads(f.metadata().get("vitk.classes", "[]")) or [str(c) for c in range(k)]
        current = -1
        for line in out.stdout.splitlines():
            if line.endswith(":") and not line.startswith(" "):
                current = [str(p) for p in paths].index(line[:-1])
                continue
            p, name = line.split(maxsplit=1)
            diff = abs(float(p) - probs[current, classes.index(name)])
            worst = max(worst, diff)
    verdict = "PASS" if worst <= a.tol else "FAIL"
    print(f"{a.images} images at {a.image_size}x{a.image_size}, {k} classes: largest probability "
          f"difference vitk vs timm {worst:.2e} (tol {a.tol:.0e}): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
