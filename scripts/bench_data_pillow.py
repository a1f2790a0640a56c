"""Pillow side of `cargo xtask bench data`: images/s on one core for the same pipeline as
crates/semhitok-data/examples/bench_data.rs on the same files.

Per image: Image.open, convert("RGB"), resize the shorter side to SIZE (BICUBIC, Pillow's
antialiased resampling), center crop, np.asarray (uint8 HWC). This is the torchvision
`Resize(SIZE) + CenterCrop(SIZE)` path on PIL images. It also reports the mean absolute difference
between the Rust outputs (rust_<set>.u8) and guided-diffusion's `center_crop_arr` (ADM: BOX
halving while the short side >= 2*SIZE, then BICUBIC), the reference of the Rust crop.

Usage: PYTHONPATH=.libtorch python3 scripts/bench_data_pillow.py --photos DIR --small DIR --work DIR
Prints one JSON object.
"""

import argparse
import json
import os
import time

import numpy as np
import PIL
from PIL import Image


def files(d):
    return sorted(
        os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg"))
    )


def pipeline(path, size, draft=False):
    img = Image.open(path)
    if draft:
        img.draft("RGB", (size, size))  # libjpeg DCT scaling, keeps both sides >= size
    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), resample=Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img)


def center_crop_arr(pil_image, image_size):
    # guided-diffusion/guided_diffusion/image_datasets.py (ADM)
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def bench(name, paths, size, reps, work):
    out = {}
    for draft, key in [(False, "pillow_images_per_s"), (True, "pillow_draft_images_per_s")]:
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            for p in paths:
                pipeline(p, size, draft)
            best = min(best, time.perf_counter() - t)
        out[key] = len(paths) / best
    k = min(8, len(paths))
    adm = np.stack([center_crop_arr(Image.open(p).convert("RGB"), size) for p in paths[:k]])
    adm = adm.astype(np.int32)
    for draft, key in [(False, "mae_pillow_vs_adm"), (True, "mae_pillow_draft_vs_adm")]:
        tv = np.stack([pipeline(p, size, draft) for p in paths[:k]]).astype(np.int32)
        out[key] = float(np.abs(tv - adm).mean())
    for suffix in ["", "_scaled"]:
        rust_file = os.path.join(work, f"rust_{name}{suffix}.u8")
        if os.path.exists(rust_file):
            rust = np.fromfile(rust_file, dtype=np.uint8).reshape(k, size, size, 3).astype(np.int32)
            out[f"mae_rust{suffix}_vs_adm"] = float(np.abs(rust - adm).mean())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", required=True)
    ap.add_argument("--small", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    res = {
        "pillow_version": PIL.__version__,
        "photos": bench("photos", files(a.photos), a.size, a.reps, a.work),
        "imagenet_like": bench("imagenet_like", files(a.small), a.size, a.reps, a.work),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
