#!/usr/bin/env bash
# H200: the Fashion-MNIST understanding table (issue 17 §4): SmolLM2-135M-Instruct LLaVA,
# stage 1 (projector) then stage 2 (projector + full LLM), on four vision feature sets:
#   sghc       the SGHC tokenizer's quantized [semantic | pixel] codes
#   sem-only   the semantic-only tokenizer's codes
#   pixel-vq   the pixel-only VQ tokenizer's codes (joint stage, semantic weight 0)
#   teacher    the continuous teacher features (the upper bound; read through the sghc folder)
# then accuracy (class question, normalised exact match) and POPE-style yes/no F1 on the test
# split. Prepared here, run by the lead.
#
# Usage (GPU host, repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/tmp/llava scripts/gpu/llava.sh BUNDLE GGUF TOKENIZERS_DIR [FMNIST_DIR]
#     GGUF:           SmolLM2-135M-Instruct.Q4_1.gguf (98 MB; staged in pieces, scripts/gpu/stage.sh)
#     TOKENIZERS_DIR: holds sghc/model, sem-only/model, pixel-vq/model (runs/fmnist of the
#                     fmnist helper: `cargo xtask fmnist-tokenizers`)
#     FMNIST_DIR:     the four IDX .gz files (default .assets/fashion-mnist)
# Sizes (env, defaults = the whole recipe is ~1 epoch of a subset, to fit the session):
#   S1_LIMIT=20000 records for stage 1 (pretrain.json), S1_STEPS=625 (batch 32 = 1 epoch)
#   S2_LIMIT=40000 records for stage 2 (instruct.json), S2_STEPS=1250
#   EVAL_LIMIT=4000 test items (the first 2000 test images x {class, POPE}); 20000 = all
#   ONLY="sghc sem-only pixel-vq teacher" (a subset to run)
# Writes $OUT/<name>/{stage1,stage2}/ (runs), $OUT/<name>/stage2/eval.json, $OUT/table.md.
set -uo pipefail
B=${1:?BUNDLE}; GGUF=${2:?GGUF}; TOK=${3:?TOKENIZERS_DIR}; FM=${4:-.assets/fashion-mnist}
OUT=${OUT:-/tmp/llava}
S1_LIMIT=${S1_LIMIT:-20000}; S1_STEPS=${S1_STEPS:-625}
S2_LIMIT=${S2_LIMIT:-40000}; S2_STEPS=${S2_STEPS:-1250}
EVAL_LIMIT=${EVAL_LIMIT:-4000}
ONLY=${ONLY:-"sghc sem-only pixel-vq teacher"}
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }
DATA=$OUT/data
[ -d "$DATA" ] || run "$B/run.sh" semhitok data llava-fmnist --fmnist "$FM" --out "$DATA" || exit 1
for name in $ONLY; do
  case $name in
    teacher) folder=$TOK/sghc/model; feats=teacher ;;
    *) folder=$TOK/$name/model; feats=quantized ;;
  esac
  [ -d "$folder" ] || { echo "skip $name: no $folder" >&2; continue; }
  common=(--set "llava.tokenizer=\"$folder\"" --set "llava.features=\"$feats\""
          --set "llm.weights=\"$GGUF\"" --set 'run.device="cuda"')
  s1=$OUT/$name/stage1; s2=$OUT/$name/stage2
  t0=$(date +%s)
  run "$B/run.sh" semhitok train --config configs/llava-fmnist-stage1.toml "${common[@]}" \
    --set "run.out_dir=\"$s1\"" --set "data.json=\"$DATA/pretrain.json\"" \
    --set "data.limit=$S1_LIMIT" --set "schedule.steps=$S1_STEPS" \
    --set "optim.warmup_steps=$(( S1_STEPS * 3 / 100 ))" --overwrite 2>&1 | tail -5
  run "$B/run.sh" semhitok train --config configs/llava-fmnist-stage2.toml "${common[@]}" \
    --set "run.out_dir=\"$s2\"" --set "llava.projector=\"$s1\"" \
    --set "data.json=\"$DATA/instruct.json\"" --set "data.eval=\"$DATA/test.jsonl\"" \
    --set "data.limit=$S2_LIMIT" --set "schedule.steps=$S2_STEPS" \
    --set "optim.warmup_steps=$(( S2_STEPS * 3 / 100 ))" --set "data.eval_limit=$EVAL_LIMIT" \
    --overwrite 2>&1 | tail -8
  echo "$name: $(( $(date +%s) - t0 )) s" >> "$OUT/times.txt"
done
python3 - "$OUT" $ONLY <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
rows = ["| vision features | class accuracy | POPE acc | POPE precision | POPE recall | POPE F1 | yes ratio | items |",
        "|---|---|---|---|---|---|---|---|"]
for n in names:
    p = os.path.join(out, n, "stage2", "eval.json")
    if not os.path.exists(p):
        rows.append(f"| {n} | (no eval.json) |||||||"); continue
    r = json.load(open(p))["report"]["overall"]
    e, y = r.get("exact", {}), r.get("yes_no", {})
    rows.append(f"| {n} | {e.get('accuracy', 0):.4f} | {y.get('accuracy', 0):.4f} | {y.get('precision', 0):.4f} | "
                f"{y.get('recall', 0):.4f} | {y.get('f1', 0):.4f} | {y.get('yes_ratio', 0):.3f} | {json.load(open(p))['n']} |")
open(os.path.join(out, "table.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
cat "$OUT/times.txt" 2>/dev/null
