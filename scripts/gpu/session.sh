#!/usr/bin/env bash
# One H200 session: everything the docs/benchmarks/*-gpu.md tables are made from, in one call.
# Usage (on the GPU host, from the repository root, bundle built by `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/session.sh .gpu/bundle
# Writes JSON lines and logs under $OUT. Each benchmark pair (tch, PyTorch eager) runs back to back.
# SECTIONS picks parts (default: all): smoke nn train tests tiny gan, e.g. SECTIONS="train gan".
set -uo pipefail
SECTIONS=${SECTIONS:-smoke nn train tests tiny gan}
on() { [[ " $SECTIONS " == *" $1 "* ]]; }
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
# Test binaries locate fixtures and assets through the source path they were built at.
. "$(dirname "$0")/build_root.sh" && link_build_root "$B"
# A subset of the embedded assets travels in .gpu/assets (the device call carries at most 64 MiB).
if [ ! -e .assets ] && [ -d .gpu/assets ]; then ln -sfn .gpu/assets .assets; fi
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }

on smoke && run "$B/run.sh" semhitok-smoke > "$OUT/smoke.json" 2>> "$OUT/log.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"

# semhitok-nn: one stage-2 step (teacher + SPC + ViT-B enc + SGHC + ViT-B dec + PatchGAN), batch 32, bf16.
on nn && for impl in tch torch; do
  if [ $impl = tch ]; then cmd=("$B/run.sh" bench_stage2); else cmd=(python3 scripts/bench_nn_gpu_torch.py); fi
  run "${cmd[@]}" --size paper --batch 32 --steps 10 --warmup 3 >> "$OUT/nn_stage2.jsonl" 2>> "$OUT/log.txt"
done

# semhitok-train: `pre` stage steps at paper size (same model, batch, precision on both sides),
# alternating ROUNDS times (default 2) of STEPS timed steps (default 20); each then re-runs its steps with a sync per phase
# (phases_ms, untimed part). NO_COPY=1 adds a third run per round: the Rust trainer under plain autocast
# (`run.bf16_weight_copy=false`), to measure the flat bf16 weight copy itself.
if on train && [ -x "$B/bin/semhitok" ]; then
  for round in $(seq 1 "${ROUNDS:-2}"); do
    run "$B/run.sh" semhitok bench --config configs/paper-pre-vitb-256.toml --steps "${STEPS:-20}" --warmup 5 --profile >> "$OUT/train_pre.jsonl" 2>> "$OUT/log.txt"
    run python3 scripts/bench_train_gpu_torch.py --batch 32 --steps "${STEPS:-20}" --warmup 5 --profile >> "$OUT/train_pre.jsonl" 2>> "$OUT/log.txt"
    if [ "${NO_COPY:-0}" = 1 ]; then
      run "$B/run.sh" semhitok bench --config configs/paper-pre-vitb-256.toml --steps "${STEPS:-20}" --warmup 5 --profile \
        --set run.bf16_weight_copy=false >> "$OUT/train_pre.jsonl" 2>> "$OUT/log.txt"
    fi
  done
fi

# The test suite on CUDA (test_device! bodies run on both devices here).
if on tests; then
  run "$B/run.sh" --tests > "$OUT/tests.log" 2>&1
  echo "tests rc=$?" >> "$OUT/tests.log"
fi
# A tiny embedded-default SPC run on CUDA and on 2 CPU threads of the same host: same config, same photos.
on tiny && for dev in cuda cpu; do
  run "$B/run.sh" semhitok train --config configs/embedded-spc.toml --device $dev --quiet \
    --set run.out_dir=/tmp/tiny-spc-$dev --set data.root=.assets/photos >> "$OUT/log.txt" 2>&1
  cp /tmp/tiny-spc-$dev/metrics.jsonl "$OUT/tiny_spc_$dev.jsonl" 2>/dev/null
done

# The GAN on CUDA with bf16: tiny SPC, then `pre` with the discriminator on from step 100.
if on gan; then
  run "$B/run.sh" semhitok train --config configs/embedded-spc.toml --device cuda --quiet \
    --set run.out_dir=/tmp/gan-spc --set data.root=.assets/photos --set run.precision=bf16 >> "$OUT/log.txt" 2>&1
  run "$B/run.sh" semhitok train --config configs/embedded-pre.toml --device cuda --quiet \
    --set run.out_dir=/tmp/gan-pre --set data.root=.assets/photos --set run.precision=bf16 \
    --set init.spc=/tmp/gan-spc --set schedule.steps=400 --set disc.enabled=true --set disc.start_step=100 \
    >> "$OUT/log.txt" 2>&1
  echo "gan rc=$?" >> "$OUT/log.txt"
  cp /tmp/gan-pre/metrics.jsonl "$OUT/gan_pre_cuda.jsonl" 2>/dev/null
fi

[ -f "$OUT/tests.log" ] && grep -E "test result|FAILED|panicked" "$OUT/tests.log" | tail -40
tail -n 3 "$OUT"/*.jsonl
