#!/usr/bin/env python3
"""ImageNet-like JPEG fixtures from the embedded photos (`.assets/photos`, `cargo xtask assets`).

Writes `OUT/<synset>/<synset>_<i>.JPEG` class folders (ImageNet's train layout) of crops of the
photos at ImageNet-like sizes (shorter side 333-500, aspect 3:4 .. 16:9, median about 500x375),
JPEG quality 90, plus `OUT/LOC_synset_mapping.txt`; with `--captions` a `<stem>.txt` caption next
to each image (for `semhitok data pack`). Deterministic in `--seed`. Pure Pillow (any version
>= 9; the fixtures in docs/guide/training.md were made with the Pillow bundled in `.libtorch/`).

    PYTHONPATH=.libtorch python3 scripts/data/imagenet_like.py --out /tmp/inet --classes 4 --per-class 8
"""
import argparse
import os
import random

from PIL import Image

ASPECTS = [(4, 3), (3, 4), (1, 1), (3, 2), (16, 9), (5, 4)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=".assets/photos")
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--captions", action="store_true")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    names = sorted(f for f in os.listdir(a.photos) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not names:
        raise SystemExit(f"no photos in {a.photos} (run `cargo xtask assets`)")
    os.makedirs(a.out, exist_ok=True)
    mapping = []
    for c in range(a.classes):
        syn = f"n{c:08d}"
        d = os.path.join(a.out, syn)
        os.makedirs(d, exist_ok=True)
        photo_name = names[c % len(names)]
        mapping.append(f"{syn} {os.path.splitext(photo_name)[0].split('__')[-1].replace('_', ' ')}")
        photo = Image.open(os.path.join(a.photos, photo_name)).convert("RGB")
        for i in range(a.per_class):
            aw, ah = rng.choice(ASPECTS)
            short = rng.randint(333, 500)
            w, h = (short * aw // ah, short) if aw >= ah else (short, short * ah // aw)
            # a crop of the photo with that aspect, at least the target size where possible
            scale = rng.uniform(0.35, 1.0) * min(photo.width / w, photo.height / h)
            cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
            x = rng.randint(0, photo.width - cw)
            y = rng.randint(0, photo.height - ch)
            img = photo.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
            stem = os.path.join(d, f"{syn}_{i}")
            img.save(stem + ".JPEG", quality=90)
            if a.captions:
                with open(stem + ".txt", "w") as f:
                    f.write(f"a photo of {mapping[-1].split(' ', 1)[1]}, crop {i}\n")
    with open(os.path.join(a.out, "LOC_synset_mapping.txt"), "w") as f:
        f.write("\n".join(mapping) + "\n")
    print(f"{a.classes * a.per_class} images in {a.classes} classes under {a.out}")


if __name__ == "__main__":
    main()
