#!/usr/bin/env bash
# Issue 21 in one device call: the CUDA tests of the ViT nodes, the FP8 teacher probe
# (scripts/gpu/fp8_teacher_probe.py), then `train_rounds.sh` for each stage in STAGES.
# Usage on the GPU host, from the repository root, with the bundle packed as
#   tar -cf - BN/run.sh BN/build_root BN/manifest.json BN/bin/semhitok BN/tests/{nn,train} | xz > C/BN.tar.xz
# (from .gpu/, after `cargo xtask bundle --out .gpu/BN`; carry C):
#   C=.gpu/c1 BN=b1 [TESTS=1] [FP8=1] [FP8_ARGS=--compile] [STAGES="pre decoder-ft joint"] \
#     [ROUNDS=1] [STEPS=20] [TMO=250] OUT=... scripts/gpu/issue21_call.sh
# Leaves $OUT/results.tgz (r/: tests.txt, fp8.jsonl, train_rounds.jsonl, log.txt, times.txt).
set -u
C=${C:?call dir}; BN=${BN:?bundle name}
tar -xJf "$C/$BN.tar.xz" -C .gpu
B=.gpu/$BN
. scripts/gpu/build_root.sh && link_build_root "$B"
R=$OUT/r; mkdir -p "$R"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$R/gpu.txt"
start=$(date +%s)
if [ "${TESTS:-1}" = 1 ]; then
  { timeout 150 "$B/run.sh" nn fused_linear; echo "nn rc=$?"
    timeout 240 "$B/run.sh" train pre_fused_vit_nodes; echo "train rc=$?"; } > "$R/tests.txt" 2>&1
  echo "tests done at $(( $(date +%s) - start )) s" >> "$R/times.txt"
fi
if [ "${FP8:-1}" = 1 ]; then
  timeout 200 python3 scripts/gpu/fp8_teacher_probe.py ${FP8_ARGS:-} > "$R/fp8.jsonl" 2> "$R/fp8.log"
  rc=$?
  echo "fp8 done at $(( $(date +%s) - start )) s rc=$rc" >> "$R/times.txt"
fi
for st in ${STAGES:-}; do
  OUT=$R STAGE=$st ROUNDS=${ROUNDS:-1} STEPS=${STEPS:-20} timeout ${TMO:-250} scripts/gpu/train_rounds.sh "$B"
  rc=$?
  echo "$st done at $(( $(date +%s) - start )) s rc=$rc" >> "$R/times.txt"
done
grep -c "is deprecated" "$R/log.txt" >> "$R/times.txt" 2>/dev/null
tar czf "$OUT/results.tgz" -C "$OUT" r
