#!/usr/bin/env bash
# Train one variant of the demo's stage 2 (SGHC and the semantic-only baseline, both from the demo's
# frozen SPC in runs/demo/spc) and evaluate the pair on the demo's held-out crops.
# Usage (after one `cargo xtask demo`, from the repository root):
#   scripts/demo_variant.sh NAME [KEY=VALUE ...]     e.g. scripts/demo_variant.sh e3 schedule.steps=3000
# Writes runs/exp/NAME-{pre,sem-only,eval}/ and prints "NAME model|baseline ema psnr rfid".
set -euo pipefail
name=$1; shift
B=target/release/semhitok
cargo build --release --quiet -p semhitok-train --bin semhitok
export LD_LIBRARY_PATH=.libtorch/torch/lib
mkdir -p runs/exp
for cfg in pre sem-only; do
  sets=(--set "init.spc=\"runs/demo/spc\"" --set "run.out_dir=\"runs/exp/$name-$cfg\"")
  for s in "$@"; do sets+=(--set "$s"); done
  "$B" train --config "configs/embedded-$cfg.toml" "${sets[@]}" --quiet > "runs/exp/$name-$cfg.log" 2>&1
done
"$B" eval --checkpoint "runs/exp/$name-pre" --baseline "runs/exp/$name-sem-only" \
  --out "runs/exp/$name-eval" > "runs/exp/$name-eval.log" 2>&1
python3 -c "
import json
m = json.load(open('runs/exp/$name-eval/eval.json'))
for x in m['models']:
    print('$name', x['name'], x['ema_weights'], round(x['psnr'], 3), round(x['rfid'], 2))
"
