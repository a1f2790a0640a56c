#!/usr/bin/env bash
# Plan the device calls that carry FILES to the GPU host: every file is split into sha256-checked
# pieces (scripts/gpu/stage.sh split) and the pieces are dealt, in order, into call folders of at
# most CAP_MB each (the device carries at most 64 MiB per call, working tree included).
# Usage: [PIECE_MB=8] scripts/gpu/pack.sh OUT_DIR CAP_MB NAME=FILE [NAME=FILE ...]  (pieces of PIECE_MB MiB pack tightly)
#   -> OUT_DIR/1, OUT_DIR/2, ... ; carry OUT_DIR/N in call N and run
#      `scripts/gpu/stage.sh take OUT_DIR/N .gpu/stash` there; files appear as .gpu/stash/NAME.
set -euo pipefail
out=${1:?OUT_DIR}; cap=${2:?CAP_MB}; shift 2
rm -rf "$out"; mkdir -p "$out/all"
pieces=()
for spec in "$@"; do
  name=${spec%%=*}; file=${spec#*=}
  scripts/gpu/stage.sh split "$file" "$name" "${PIECE_MB:-8}" "$out/all" > /dev/null
  pieces+=($(ls "$out/all/$name".part* | sort))
done
call=1; used=0; capb=$((cap * 1024 * 1024))
mkdir -p "$out/$call"
# Pieces in the order the files were named (what is needed first travels first).
for p in "${pieces[@]}"; do
  sz=$(stat -c %s "$p")
  if [ $((used + sz)) -gt "$capb" ] && [ "$used" -gt 0 ]; then call=$((call + 1)); used=0; mkdir -p "$out/$call"; fi
  mv "$p" "$out/$call/"; used=$((used + sz))
done
# Every call carries all hashes (tiny): `take` can then tell what is still missing.
for d in "$out"/[0-9]*; do cp "$out/all"/*.sha256 "$d/"; done
rm -rf "$out/all"
for d in "$out"/[0-9]*; do echo "call $(basename "$d"): $(du -sm "$d" | cut -f1) MB: $(ls "$d" | grep -v sha256 | tr '\n' ' ')"; done
