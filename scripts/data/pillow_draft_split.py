"""Pillow + draft on the embedded photos, split into the whole pipeline and the decode alone
(issue 14; the counterpart of crates/semhitok-data/examples/jpeg_split.rs): files read into memory
first, best of 3 passes, ms per image, one JSON line.

Usage: PYTHONPATH=.libtorch taskset -c 1 python3 scripts/data/pillow_draft_split.py [PHOTOS] [SIZE]
"""
import io, os, sys, time, json, PIL
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_data_pillow import pipeline
from PIL import Image
d = sys.argv[1] if len(sys.argv) > 1 else ".assets/photos"
size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
fs = sorted(os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg")))
bufs = [open(f, "rb").read() for f in fs]
def best(fn, reps=3):
    b = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for x in bufs: fn(x)
        b = min(b, time.perf_counter() - t)
    return b * 1e3 / len(bufs)
def draft_decode(x):
    im = Image.open(io.BytesIO(x)); im.draft("RGB", (size, size)); im.convert("RGB").load()
print(json.dumps({"pillow": PIL.__version__, "files": len(bufs),
  "pillow_draft_pipeline_ms": best(lambda x: pipeline(io.BytesIO(x), size, True)),
  "pillow_draft_decode_ms": best(draft_decode)}))
