"""Cross-check of a run's TensorBoard event files and FID reference .npz files with the Python
tools people use: TensorBoard's own event reader and numpy.

Run: python3 -m venv V && V/bin/pip install -r scripts/check/requirements-val.txt
     V/bin/python scripts/check/tb_npz_crosscheck.py RUN_DIR [STATS.npz ...]

For RUN_DIR/tb it loads every event file with tensorboard's EventAccumulator (the loader
`tensorboard --logdir` uses for the legacy event format), prints the scalar and image tags with
their step counts and last values, decodes each image, and compares the `val/*` scalars with the
`"kind": "val"` records of RUN_DIR/metrics.jsonl (float32 equality). Each STATS.npz is loaded
with numpy.load: `mu` [2048], `sigma` [2048, 2048] symmetric, both float64. Exits non-zero on a
mismatch.
"""
import io
import json
import os
import sys

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def check_run(run):
    tb = os.path.join(run, "tb")
    acc = EventAccumulator(tb, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for t in sorted(tags["scalars"]):
        ev = acc.Scalars(t)
        print(f"scalar {t}: {len(ev)} events, steps {ev[0].step}..{ev[-1].step}, last {ev[-1].value:.6g}")
    for t in sorted(tags["images"]):
        ev = acc.Images(t)
        im = Image.open(io.BytesIO(ev[-1].encoded_image_string))
        assert im.size == (ev[-1].width, ev[-1].height), (im.size, ev[-1].width, ev[-1].height)
        print(f"image {t}: {len(ev)} events, last {ev[-1].width}x{ev[-1].height} at step {ev[-1].step}")
    recs = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    val = [r for r in recs if r.get("kind") == "val"]
    bad = 0
    for r in val:
        for k, v in r.items():
            if k in ("kind", "step", "images", "weights", "grid", "seconds"):
                continue
            got = [e.value for e in acc.Scalars(f"val/{k}") if e.step == r["step"]]
            if not got or np.float32(v) != np.float32(got[-1]):
                print(f"MISMATCH val/{k} at step {r['step']}: jsonl {v} vs tensorboard {got}")
                bad += 1
    train = [r for r in recs if "kind" not in r]
    for r in train:
        got = [e.value for e in acc.Scalars("train/loss") if e.step == r["step"]]
        if not got or np.float32(r["loss"]) != np.float32(got[-1]):
            print(f"MISMATCH train/loss at step {r['step']}: {r['loss']} vs {got}")
            bad += 1
    print(f"{len(val)} val records and {len(train)} train records compared, {bad} mismatches")
    return bad


def check_npz(path):
    z = np.load(path)
    mu, sigma = z["mu"], z["sigma"]
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048), (mu.shape, sigma.shape)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert np.array_equal(sigma, sigma.T), "sigma not symmetric"
    print(f"{path}: mu {mu.shape} {mu.dtype} mean {mu.mean():.6g}, sigma trace {np.trace(sigma):.6g}")
    return 0


if __name__ == "__main__":
    bad = check_run(sys.argv[1])
    for p in sys.argv[2:]:
        bad += check_npz(p)
    sys.exit(1 if bad else 0)
