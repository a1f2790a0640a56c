#!/usr/bin/env bash
# Data-parallel figures on ONE H200 (issue 19 §5), for docs/benchmarks/distributed.md: the trainer
# (stage `pre` at paper size, bf16, batch 32) as a plain process vs as a world-size-1 NCCL job in
# its three gradient modes (one flat all-reduce; 25 MiB buckets after the backward; 25 MiB
# buckets launched during the backward by the post-accumulate-grad hooks), and the collective's
# time per step (the `all_reduce` phase of --profile: what the step waits for after backward).
#
# Usage (on the GPU host, from the repository root; bundle from `cargo xtask bundle --out .gpu/bundle`,
# binaries used: bin/semhitok, tests/sys):
#   OUT=/some/dir ROUNDS=2 scripts/gpu/dist.sh .gpu/bundle
# Writes $OUT/dist.jsonl (one JSON line per run: world_size, dist_backend, dist_bucket_mb,
# dist_overlap say which), $OUT/dist-log.txt and $OUT/dist-summary.txt.
# ROUNDS (default 2) alternating rounds of STEPS (default 30) timed steps (+ 5 warm-up, + STEPS
# profiled). TORCH=1 adds the PyTorch reference (plain, DDP, one flat all-reduce, under torchrun).
# About 4 min at the defaults.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
CFG=configs/paper-pre-vitb-256.toml
S=${STEPS:-30}
J="$OUT/dist.jsonl"
L="$OUT/dist-log.txt"
BENCH=(semhitok bench --config $CFG --steps "$S" --warmup 5 --profile)

# semhitok-sys on CUDA: the NCCL collectives and the overlapped reducer at world size 1 (plus the
# Gloo tests, on the host's CPU).
run "$B/run.sh" sys --test-threads=1 >> "$L" 2>&1
echo "sys tests rc=$?" >> "$L"

nccl() { # world size 1 under NCCL, launcher variables by hand (rank 0 serves the TCPStore)
  local port=$1; shift
  run env MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 \
    "$B/run.sh" "${BENCH[@]}" --set dist.backend='"nccl"' "$@" >> "$J" 2>> "$L"
}
for round in $(seq 1 "${ROUNDS:-2}"); do
  p=$((29600 + 10 * round))
  # 1. plain (no launcher variables: exactly the non-distributed trainer)
  run env -u WORLD_SIZE -u RANK "$B/run.sh" "${BENCH[@]}" >> "$J" 2>> "$L"
  # 2. NCCL, one collective over the flat gradient buffer
  nccl $((p + 1))
  # 3. NCCL, 25 MiB buckets all-reduced after the backward pass
  nccl $((p + 2)) --set dist.bucket_mb=25
  # 4. NCCL, 25 MiB buckets launched during the backward pass
  nccl $((p + 3)) --set dist.bucket_mb=25 --set dist.overlap=true
  if [ "${TORCH:-0}" = 1 ] && command -v torchrun > /dev/null; then
    run python3 scripts/bench_train_gpu_torch.py --batch 32 --steps "$S" --warmup 5 --profile >> "$J" 2>> "$L"
    for mode in overlap flat; do
      run torchrun --nnodes 1 --nproc-per-node 1 --master-port $((p + 5)) \
        scripts/bench_train_gpu_torch.py --batch 32 --steps "$S" --warmup 5 --profile --ddp $mode >> "$J" 2>> "$L"
    done
  fi
done
grep -h "data-parallel:" "$L" | sort | uniq -c >> "$OUT/dist-summary.txt"

# Summary: per mode, median images/s and step time, the overhead against the plain trainer, and
# the all_reduce phase (ms per step, profiled pass).
python3 - "$J" <<'PY' | tee -a "$OUT/dist-summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
groups = {}
for r in rows:
    key = (r.get("impl"), r.get("world_size"), r.get("dist_backend"), r.get("dist_bucket_mb"), r.get("dist_overlap"))
    groups.setdefault(key, []).append(r)
plain = [r["step_ms"] for (i, w, b, *_), rs in groups.items() if i.startswith("semhitok") and b is None for r in rs]
base = statistics.median(plain) if plain else None
for (impl, world, backend, mb, ov), rs in groups.items():
    ips = [r["images_per_s"] for r in rs]
    step = [r["step_ms"] for r in rs if "step_ms" in r]
    ar = [r["phases_ms"].get("all_reduce") for r in rs if r.get("phases_ms") and "all_reduce" in r["phases_ms"]]
    mode = "" if not impl.startswith("semhitok") else "plain" if backend is None else ("flat" if not mb else f"buckets {mb} MiB" + (" overlapped" if ov else ""))
    line = (f"{impl} world={world} backend={backend} {mode}: runs={len(rs)} img/s median {statistics.median(ips):.1f} "
            f"(all: {', '.join(f'{v:.1f}' for v in ips)})")
    if step:
        line += f"; step {statistics.median(step):.2f} ms"
        if base and impl.startswith("semhitok") and backend is not None:
            line += f" ({100 * (statistics.median(step) / base - 1):+.2f}% vs plain)"
    if ar:
        line += f"; all_reduce phase {statistics.median(ar):.2f} ms/step (profiled)"
    print(line)
PY
