#!/usr/bin/env bash
# Issue 14 §2 on the GPU host: (1) the training loader alone, images/s vs decoding threads, next to
# a PyTorch DataLoader + Pillow reference on the same shards; (2) stage `pre` at paper size trained
# from those shards and from the same images as ImageNet class folders, next to `semhitok bench`'s
# synthetic-batch figure measured in the same call (target: real data >= 95 % of synthetic).
# Usage (from the repository root, bundle built by `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/data.sh .gpu/bundle
# Needs .assets/photos (or .gpu/assets/photos) and python3 with torch + Pillow. Writes under $OUT:
# loader.jsonl, bench.jsonl, pre_{webdataset,imagenet}/metrics.jsonl, log.txt.
# Knobs: WORKERS (default 1,2,4,8,15), CLASSES x PER_CLASS images (default 10 x 100 = 1000, in
# 25-sample shards), BATCHES per loader measurement (default 60), STEPS of `pre` (default 60,
# logged every 10). One call of about 2.5 minutes on the H200 host; `timings.jsonl` has the
# seconds of each part.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-data}
WORKERS=${WORKERS:-1,2,4,8,15}
STEPS=${STEPS:-60}
BATCHES=${BATCHES:-60}
mkdir -p "$OUT"
. "$(dirname "$0")/build_root.sh" && link_build_root "$B"
if [ ! -e .assets ] && [ -d .gpu/assets ]; then ln -sfn .gpu/assets .assets; fi
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
T0=$(date +%s)
mark() { echo "{\"part\": \"$1\", \"s\": $(( $(date +%s) - T0 ))}" >> "$OUT/timings.jsonl"; }
FX=$OUT/fx

# Fixtures generated here from the photos (only small files travel to the host): ImageNet-like
# JPEGs (shorter side 333-500, quality 90) as class folders, then packed into 25-sample shards (40
# shards at the default size: enough for 15 streams).
[ -d .assets/photos ] || { echo "data.sh: no .assets/photos (carry .gpu/assets/photos)" >&2; exit 2; }
[ -x "$B/run.sh" ] || { echo "data.sh: no bundle launcher $B/run.sh" >&2; exit 2; }
if [ ! -d "$FX/shards" ]; then
  run python3 scripts/data/imagenet_like.py --photos .assets/photos --out "$FX/imagenet" \
    --classes "${CLASSES:-10}" --per-class "${PER_CLASS:-100}" --captions 2>> "$OUT/log.txt" || exit 2
  run "$B/run.sh" semhitok data pack --src "$FX/imagenet" --out "$FX/shards" --shard-size 25 >> "$OUT/log.txt" 2>&1 || exit 2
fi
mark fixtures

# (1) Loader alone, both sides, same shards, transform (LlamaGen random crop + flip), batch, workers.
run timeout 90 "$B/run.sh" bench_loader --shards "$FX/shards" --size 256 --batch 64 --batches "$BATCHES" --workers "$WORKERS" \
  >> "$OUT/loader.jsonl" 2>> "$OUT/log.txt"
mark loader_semhitok
run timeout 150 python3 scripts/bench_loader_torch.py --shards "$FX/shards" --size 256 --batch 64 --batches "$BATCHES" --workers "$WORKERS" \
  >> "$OUT/loader.jsonl" 2>> "$OUT/log.txt"
mark loader_torch

# (2) `pre` at paper size. A paper-size SPC checkpoint to start from: one step with a random SigLIP
# (no weights ship offline; the cost of `pre` does not depend on them) and no k-means init.
SPC=$OUT/spc
if [ ! -d "$SPC" ]; then
  sed '/^weights = "weights\/siglip/d' configs/paper-spc-256.toml > "$OUT/spc-random-teacher.toml"
  run "$B/run.sh" semhitok train --quiet --config "$OUT/spc-random-teacher.toml" --set data.root="\"$FX/shards\"" \
    --set run.out_dir="\"$SPC\"" --set data.batch_size=8 --set schedule.steps=1 --set model.spc.kmeans_init=false --set schedule.eval_every=0 \
    >> "$OUT/log.txt" 2>&1
fi
mark spc_checkpoint
run "$B/run.sh" semhitok bench --config configs/paper-pre-vitb-256.toml --steps 20 --warmup 5 >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt"
for kind in webdataset imagenet; do
  if [ $kind = webdataset ]; then root=$FX/shards; else root=$FX/imagenet; fi
  run "$B/run.sh" semhitok train --quiet --overwrite --config configs/paper-pre-vitb-256.toml \
    --set data.kind="\"$kind\"" --set data.root="\"$root\"" --set init.spc="\"$SPC\"" \
    --set run.out_dir="\"$OUT/pre_$kind\"" --set schedule.steps="$STEPS" --set schedule.log_every=10 \
    --set schedule.ckpt_every=100000 --set schedule.keep_last=1 --set schedule.eval_every=0 >> "$OUT/log.txt" 2>&1
  mark "pre_$kind"
done
run "$B/run.sh" semhitok bench --config configs/paper-pre-vitb-256.toml --steps 20 --warmup 5 >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt"
mark done
# Summary: the loader's ratio to the PyTorch reference per worker count; img/s of the logged windows after the first (warm-up) one, data wait per step.
python3 - "$OUT" <<'PY'
import json, sys, statistics, os
out = sys.argv[1]
bench = [json.loads(l) for l in open(os.path.join(out, "bench.jsonl")) if l.strip()]
loader = [json.loads(l) for l in open(os.path.join(out, "loader.jsonl")) if l.strip()]
ours = {r["workers"]: r["img_per_s"] for r in loader if r["impl"].startswith("semhitok")}
ref = {r["workers"]: r["img_per_s"] for r in loader if not r["impl"].startswith("semhitok")}
for w in sorted(ours):
    print(json.dumps({"workers": w, "semhitok_img_per_s": ours[w], "torch_img_per_s": ref.get(w),
                      "ratio": ours[w] / ref[w] if ref.get(w) else None}))
syn = [b.get("images_per_s") for b in bench]
print(json.dumps({"synthetic_bench_img_per_s": syn}))
for kind in ("webdataset", "imagenet"):
    p = os.path.join(out, f"pre_{kind}", "metrics.jsonl")
    if not os.path.exists(p):
        print(json.dumps({"kind": kind, "error": "no metrics"})); continue
    m = [json.loads(l) for l in open(p) if l.strip()][1:]
    ips = statistics.median(r["img_per_s"] for r in m)
    ds = statistics.median(r["data_s"] for r in m)
    print(json.dumps({"kind": kind, "img_per_s_median": ips, "data_s_median": ds,
                      "vs_synthetic": ips / max(x for x in syn if x)}))
PY
