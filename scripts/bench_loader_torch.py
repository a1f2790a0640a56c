#!/usr/bin/env python3
"""PyTorch reference of `crates/semhitok-data/examples/bench_loader.rs`: images/s of a
`torch.utils.data.DataLoader` over the same webdataset tar shards, same transform (LlamaGen's
tokenizer training: `random_crop_arr(img, size)` from `dataset/augmentation.py` + random horizontal
flip), same batch and worker counts, u8 NCHW batches (no normalisation: the Rust side normalises on
the device). Shards are read with the `webdataset` package when it is installed
(`wds.WebDataset(urls, shardshuffle=True, nodesplitter=wds.split_by_node).shuffle(1000)`), else with a
`tarfile` IterableDataset that splits shards over workers the same way; the JSON says which.

    python3 scripts/bench_loader_torch.py --shards DIR --size 256 --batch 64 --batches 40 --workers 1,2,4,8,15
"""
import argparse
import glob
import io
import json
import math
import os
import random
import tarfile
import time

import numpy as np
import torch
from PIL import Image


def random_crop_arr(pil_image, image_size, min_crop_frac=0.8, max_crop_frac=1.0):
    # LlamaGen dataset/augmentation.py (from guided-diffusion), unchanged in behaviour.
    min_smaller_dim_size = math.ceil(image_size / max_crop_frac)
    max_smaller_dim_size = math.ceil(image_size / min_crop_frac)
    smaller_dim_size = random.randrange(min_smaller_dim_size, max_smaller_dim_size + 1)
    while min(*pil_image.size) >= 2 * smaller_dim_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = smaller_dim_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = random.randrange(arr.shape[0] - image_size + 1)
    crop_x = random.randrange(arr.shape[1] - image_size + 1)
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def transform(jpeg_bytes, size):
    img = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
    arr = random_crop_arr(img, size)
    if random.random() < 0.5:
        arr = arr[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class TarShards(torch.utils.data.IterableDataset):
    """Shards dealt round-robin to workers, samples grouped by key, a 1000-sample shuffle buffer."""

    def __init__(self, shards, size):
        self.shards, self.size = shards, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(wid)
        buf = []
        while True:
            order = self.shards[:]
            rng.shuffle(order)
            for shard in order[wid::nw]:
                with tarfile.open(shard) as tf:
                    cur, data = None, None
                    for m in tf:
                        if not m.isfile():
                            continue
                        key, ext = m.name.split(".", 1)
                        if ext.lower() in ("jpg", "jpeg", "png", "webp"):
                            data = tf.extractfile(m).read()
                            buf.append(data)
                            if len(buf) >= 1000:
                                j = rng.randrange(len(buf))
                                buf[j], buf[-1] = buf[-1], buf[j]
                                yield transform(buf.pop(), self.size)
            while buf:
                yield transform(buf.pop(rng.randrange(len(buf))), self.size)


def make_dataset(shards, size):
    try:
        import webdataset as wds
    except ImportError:
        return TarShards(shards, size), "tarfile IterableDataset (webdataset not installed)"
    ds = (
        wds.WebDataset(shards, shardshuffle=True, nodesplitter=wds.split_by_node, empty_check=False)
        .repeat()
        .shuffle(1000)
        .to_tuple("jpg;jpeg;png;webp")
        .map(lambda t: transform(t[0], size))
    )
    return ds, f"webdataset {wds.__version__}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--workers", default="1,2,4")
    a = ap.parse_args()
    shards = sorted(glob.glob(os.path.join(a.shards, "*.tar"))) if os.path.isdir(a.shards) else sorted(glob.glob(a.shards))
    if not shards:
        raise SystemExit(f"no .tar shards in {a.shards}")
    for w in [int(x) for x in a.workers.split(",")]:
        ds, reader = make_dataset(shards, a.size)
        dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, num_workers=w, prefetch_factor=2, persistent_workers=False)
        it = iter(dl)
        for _ in range(3):
            next(it)
        t = time.perf_counter()
        n = 0
        for _ in range(a.batches):
            n += next(it).shape[0]
        s = time.perf_counter() - t
        print(json.dumps({"impl": "torch DataLoader + Pillow", "reader": reader, "workers": w, "batch": a.batch,
                          "size": a.size, "images": n, "seconds": s, "img_per_s": n / s, "shards": len(shards),
                          "torch": torch.__version__, "pillow": Image.__version__}), flush=True)
        del it, dl


if __name__ == "__main__":
    main()
