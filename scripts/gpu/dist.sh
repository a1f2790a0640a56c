#!/usr/bin/env bash
# Data-parallel figures on ONE H200 (issue 19 §5), for docs/benchmarks/distributed.md: the trainer
# (stage `pre` at paper size, bf16, batch 32) as a plain process vs as a world-size-1 NCCL job, and
# the collective's time per step; the PyTorch reference likewise (plain, DDP, one flat all-reduce).
#
# Usage (on the GPU host, from the repository root, bundle built by `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/dist.sh .gpu/bundle
# Writes $OUT/dist.jsonl (one JSON line per run, `world_size` and `dist_backend` say which) and $OUT/dist-log.txt.
# ROUNDS (default 3) alternating rounds of STEPS (default 20) timed steps; each record's phases_ms
# (from --profile: a sync at every phase boundary, untimed pass) has `all_reduce` for the NCCL runs.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
CFG=configs/paper-pre-vitb-256.toml
S=${STEPS:-20}
J="$OUT/dist.jsonl"
L="$OUT/dist-log.txt"

# The NCCL path of semhitok-sys itself (world size 1: all_reduce / broadcast / all_gather / barrier on CUDA).
run "$B/run.sh" --list >> "$L" 2>&1
for t in "$B"/tests/sys*; do run "$t" --test-threads=1 >> "$L" 2>&1; echo "sys tests rc=$?" >> "$L"; done

for round in $(seq 1 "${ROUNDS:-3}"); do
  # 1. plain (no launcher variables: exactly the non-distributed trainer)
  run env -u WORLD_SIZE -u RANK "$B/run.sh" semhitok bench --config $CFG --steps "$S" --warmup 5 --profile >> "$J" 2>> "$L"
  # 2. world size 1 under NCCL, launcher variables set by hand (rank 0 serves the TCPStore)
  run env MASTER_ADDR=127.0.0.1 MASTER_PORT=$((29600 + round)) RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 \
    "$B/run.sh" semhitok bench --config $CFG --steps "$S" --warmup 5 --profile --set dist.backend='"nccl"' >> "$J" 2>> "$L"
  # 3. the same under torchrun (its agent serves the store; --no-python runs the bundle's launcher)
  if command -v torchrun > /dev/null; then
    run torchrun --nnodes 1 --nproc-per-node 1 --master-port $((29700 + round)) --no-python \
      "$B/run.sh" semhitok bench --config $CFG --steps "$S" --warmup 5 --profile >> "$J" 2>> "$L"
  fi
  # 4. PyTorch eager: plain, DDP (bucketed overlap), one flat all-reduce
  run python3 scripts/bench_train_gpu_torch.py --batch 32 --steps "$S" --warmup 5 --profile >> "$J" 2>> "$L"
  if command -v torchrun > /dev/null; then
    for mode in overlap flat; do
      run torchrun --nnodes 1 --nproc-per-node 1 --master-port $((29800 + round)) \
        scripts/bench_train_gpu_torch.py --batch 32 --steps "$S" --warmup 5 --profile --ddp $mode >> "$J" 2>> "$L"
    done
  fi
done

# Summary: per implementation, median images/s and the all_reduce phase (ms per step).
python3 - "$J" <<'PY' | tee "$OUT/dist-summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
groups = {}
for r in rows:
    key = (r.get("impl"), r.get("world_size"), r.get("dist_backend"))
    groups.setdefault(key, []).append(r)
for (impl, world, backend), rs in groups.items():
    ips = [r["images_per_s"] for r in rs]
    ar = [r["phases_ms"].get("all_reduce") for r in rs if r.get("phases_ms") and "all_reduce" in r["phases_ms"]]
    step = [sum(r["phases_ms"].values()) for r in rs if r.get("phases_ms")]
    print(f"{impl} world={world} backend={backend}: runs={len(rs)} img/s median {statistics.median(ips):.1f} "
          f"(all: {', '.join(f'{v:.1f}' for v in ips)})"
          + (f"; all_reduce {statistics.median(ar):.2f} ms of a {statistics.median(step):.1f} ms profiled step" if ar else ""))
PY
