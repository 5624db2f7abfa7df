"""Writes tests/fixtures/resample_timm.safetensors: inputs and timm's outputs of
`resample_abs_pos_embed` and `resample_patch_embed`, the reference of tests/resample.rs.

Run once with a Python that has torch, timm and safetensors (scripts/find-torch-python.sh):
    python3 scripts/make_resample_fixture.py tests/fixtures/resample_timm.safetensors
vitk's tests read the file; they never import torch.
"""

import sys

import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

torch.manual_seed(0)
D = 6
out = {}
# pos_embed [1, prefix + gh*gw, D] from an 8x8 grid to three grids, with and without a class token.
for prefix in (0, 1):
    src = torch.randn(1, prefix + 64, D)
    out[f"pos.p{prefix}.src"] = src
    for nh, nw in ((12, 12), (6, 6), (10, 14)):
        y = resample_abs_pos_embed(src, new_size=[nh, nw], old_size=[8, 8], num_prefix_tokens=prefix)
        out[f"pos.p{prefix}.{nh}x{nw}"] = y.contiguous()
# a non-square source grid: 4x6 -> 9x5 (old_size given, as vitk knows it from the checkpoint).
src = torch.randn(1, 1 + 24, D)
out["pos.p1.src4x6"] = src
out["pos.p1.4x6to9x5"] = resample_abs_pos_embed(src, new_size=[9, 5], old_size=[4, 6], num_prefix_tokens=1).contiguous()
# patch_embed.proj.weight [D, C, 4, 4] to 8x8 (up), 2x2 (down) and 3x5 (odd, non-square).
w = torch.randn(D, 2, 4, 4)
out["patch.src"] = w
for nh, nw in ((8, 8), (2, 2), (3, 5)):
    out[f"patch.{nh}x{nw}"] = resample_patch_embed(w, [nh, nw]).contiguous()
save_file({k: v.float().contiguous() for k, v in out.items()}, sys.argv[1],
          metadata={"timm": __import__("timm").__version__, "torch": torch.__version__})
print("wrote", sys.argv[1], len(out), "tensors")
