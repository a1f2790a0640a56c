#!/usr/bin/env bash
# One H200 session: everything the docs/benchmarks/*-gpu.md tables are made from, in one call.
# Usage (on the GPU host, from the repository root, bundle built by `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/session.sh .gpu/bundle
# Writes JSON lines and logs under $OUT. Each benchmark pair (tch, PyTorch eager) runs back to back.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
# Test binaries locate fixtures and assets through the source path they were built at.
if [ ! -e /work/main/Cargo.toml ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
# A subset of the embedded assets travels in .gpu/assets (the device call carries at most 64 MiB).
if [ ! -e .assets ] && [ -d .gpu/assets ]; then ln -sfn .gpu/assets .assets; fi
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }

run "$B/run.sh" semhitok-smoke > "$OUT/smoke.json" 2>> "$OUT/log.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"

# semhitok-nn: one stage-2 step (teacher + SPC + ViT-B enc + SGHC + ViT-B dec + PatchGAN), batch 32, bf16.
for impl in tch torch; do
  if [ $impl = tch ]; then cmd=("$B/run.sh" bench_stage2); else cmd=(python3 scripts/bench_nn_gpu_torch.py); fi
  run "${cmd[@]}" --size paper --batch 32 --steps 10 --warmup 3 >> "$OUT/nn_stage2.jsonl" 2>> "$OUT/log.txt"
done

# semhitok-train: `pre` stage steps at paper size (same model, batch, precision on both sides).
if [ -x "$B/bin/semhitok" ]; then
  run "$B/run.sh" semhitok bench --config configs/paper-pre-vitb-256.toml --steps 20 --warmup 5 >> "$OUT/train_pre.jsonl" 2>> "$OUT/log.txt"
  run python3 scripts/bench_train_gpu_torch.py --batch 32 --steps 20 --warmup 5 >> "$OUT/train_pre.jsonl" 2>> "$OUT/log.txt"
fi

# The test suite on CUDA (test_device! bodies run on both devices here).
run "$B/run.sh" --tests > "$OUT/tests.log" 2>&1
echo "tests rc=$?" >> "$OUT/tests.log"
# A tiny embedded-default SPC run on CUDA and on 2 CPU threads of the same host: same config, same photos.
for dev in cuda cpu; do
  run "$B/run.sh" semhitok train --config configs/embedded-spc.toml --device $dev --quiet \
    --set run.out_dir=/tmp/tiny-spc-$dev --set data.root=.assets/photos >> "$OUT/log.txt" 2>&1
  cp /tmp/tiny-spc-$dev/metrics.jsonl "$OUT/tiny_spc_$dev.jsonl" 2>/dev/null
done

grep -E "test result|FAILED|panicked" "$OUT/tests.log" | tail -40
cat "$OUT"/*.jsonl
