"""Writes tests/fixtures/augment_pil.json: small images, the bytes Pillow gives for each
AutoAugment / RandAugment op (called through timm's op functions, as timm's RandAugment calls
them), timm's level -> argument mapping, and torchvision's AutoAugment CIFAR-10 table and
magnitude bins. The reference of tests/augment_ops.rs.

Run once with a Python that has pillow, timm and torchvision (scripts/find-torch-python.sh):
    python3 scripts/make_augment_fixture.py tests/fixtures/augment_pil.json
vitk's tests read the file; they never import Python.

Images are written as hex of [C, H, W] bytes (planes, row-major), as vitk stores them.
The affine ops use resample=BILINEAR and fillcolor=(125, 123, 114), the CIFAR-10 mean in
bytes (vitk's choices; see src/data/pixel_ops.rs).
"""

import json
import sys

import numpy as np
import PIL
import timm
import timm.data.auto_augment as aa
import torchvision
from PIL import Image
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

FILL = (125, 123, 114)
KW = dict(resample=Image.BILINEAR, fillcolor=FILL)

rng = np.random.default_rng(0)
arrays = [
    rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),  # full range, square
    rng.integers(60, 180, size=(10, 12, 3), dtype=np.uint8),  # narrow range, H 10 x W 12
    (rng.integers(0, 5, size=(10, 12, 3)) * 40 + 20).astype(np.uint8),  # five values only
    # 24 x 32, skewed values: big enough (> 255 pixels) for Equalize to do something.
    (rng.beta(2, 5, size=(24, 32, 3)) * 200 + 30).astype(np.uint8),
]
# Ops run on the last, larger image only (to keep the file small).
BIG_OPS = {"AutoContrast": [None], "Equalize": [None], "Contrast": [0.37], "Rotate": [27.0]}
images = [Image.fromarray(a, "RGB") for a in arrays]


def chw_hex(img):
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).tobytes().hex()


# (op name in vitk's PixelOp, timm function, list of arguments)
OPS = [
    ("AutoContrast", aa.auto_contrast, [None]),
    ("Equalize", aa.equalize, [None]),
    ("Invert", aa.invert, [None]),
    ("Solarize", aa.solarize, [128, 26, 198.33333333333334]),
    ("SolarizeAdd", aa.solarize_add, [99, 55]),
    ("Posterize", aa.posterize, [1, 2, 6]),  # Pillow 13 refuses 0 bits
    ("Color", aa.color, [1.72, 0.37, 0.1]),
    ("Contrast", aa.contrast, [1.72, 0.37, 1.9]),
    ("Brightness", aa.brightness, [1.72, 0.37]),
    ("Sharpness", aa.sharpness, [1.72, 0.37, 0.1]),
    ("ShearX", aa.shear_x, [0.27, -0.12]),
    ("ShearY", aa.shear_y, [0.27, -0.12]),
    ("TranslateX", aa.translate_x_abs, [4.86, -3.0, 14.0]),
    ("TranslateY", aa.translate_y_abs, [4.86, -3.0]),
    ("Rotate", aa.rotate, [27.0, -13.5, 90.0, 180.0]),
]

ops = []
for i, img in enumerate(images):
    for name, fn, args in OPS:
        if i == len(images) - 1:
            args = BIG_OPS.get(name, [])
        for arg in args:
            kw = dict(KW)
            out = fn(img.copy(), **kw) if arg is None else fn(img.copy(), arg, **kw)
            ops.append({"image": i, "op": name, "arg": arg, "out": chw_hex(out)})

# timm's level functions with the random sign forced each way.
levels = []
hp = dict(aa._HPARAMS_DEFAULT)
for negate in (False, True):
    aa._randomly_negate = (lambda v: -v) if negate else (lambda v: v)
    for name in sorted(set(aa._RAND_TRANSFORMS) | set(aa._RAND_INCREASING_TRANSFORMS)):
        fn = aa.LEVEL_TO_ARG[name]
        for m in (0.0, 3.7, 9.0, 10.0):
            args = [] if fn is None else [float(v) for v in fn(m, hp)]
            levels.append({"op": name, "magnitude": m, "negate": negate, "args": args})

# torchvision's AutoAugment CIFAR-10 table and bins for 32x32 images.
t = AutoAugment(AutoAugmentPolicy.CIFAR10)
policy = [[[op, p, b] for (op, p, b) in sub] for sub in t.policies]
space = t._augmentation_space(10, [32, 32])
bins = {k: {"values": [float(x) for x in v.reshape(-1).tolist()], "signed": bool(s)} for k, (v, s) in space.items()}

doc = {
    "versions": {"pillow": PIL.__version__, "timm": timm.__version__, "torchvision": torchvision.__version__},
    "fill": list(FILL),
    "images": [{"height": a.shape[0], "width": a.shape[1], "data": chw_hex(im)} for a, im in zip(arrays, images)],
    "ops": ops,
    "levels": levels,
    "rand_transforms": list(aa._RAND_TRANSFORMS),
    "rand_increasing_transforms": list(aa._RAND_INCREASING_TRANSFORMS),
    "cifar10_policy": policy,
    "cifar10_bins": bins,
}
with open(sys.argv[1], "w") as f:
    json.dump(doc, f, separators=(",", ":"))
print("wrote", sys.argv[1], len(ops), "op outputs,", len(levels), "levels")
