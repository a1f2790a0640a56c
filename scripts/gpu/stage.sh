#!/usr/bin/env bash
# Move files larger than one device call can carry (64 MiB per call, the working tree included)
# to the GPU host in pieces, over consecutive calls to a machine that stays warm.
#
# Here (before the calls):   scripts/gpu/stage.sh split FILE NAME PIECE_MB OUTDIR
#   writes OUTDIR/NAME.part000, .part001, ... and OUTDIR/NAME.sha256 (the whole file's hash);
#   put one piece (or more, within the limit) into each call's carried folder.
# There (in each call):      scripts/gpu/stage.sh take CARRIED_DIR STASH_DIR
#   appends every carried NAME.partNNN (in order) to STASH_DIR/NAME.parts/ and, once all pieces of
#   NAME are there and their concatenation matches NAME.sha256, writes STASH_DIR/NAME (atomically)
#   and prints "staged NAME". STASH_DIR must be a git-ignored path that no call carries
#   (e.g. .gpu/stash): the device keeps such paths between calls while the machine is warm.
# Status:                    scripts/gpu/stage.sh status STASH_DIR
set -euo pipefail
cmd=${1:?split|take|status}
case "$cmd" in
  split)
    f=${2:?FILE}; name=${3:?NAME}; mb=${4:?PIECE_MB}; out=${5:?OUTDIR}
    mkdir -p "$out"
    split -d -a 3 -b "${mb}M" "$f" "$out/$name.part"
    n=$(ls "$out/$name".part* | wc -l)
    echo "$(sha256sum < "$f" | cut -d' ' -f1) $n" > "$out/$name.sha256"
    echo "split $f into $n pieces of <= $mb MB in $out"
    ;;
  take)
    src=${2:?CARRIED_DIR}; stash=${3:?STASH_DIR}
    mkdir -p "$stash"
    shopt -s nullglob
    for h in "$src"/*.sha256; do cp "$h" "$stash/"; done
    for p in "$src"/*.part[0-9][0-9][0-9]; do
      base=$(basename "$p"); name=${base%.part*}
      mkdir -p "$stash/$name.parts"; cp "$p" "$stash/$name.parts/$base"
    done
    for h in "$stash"/*.sha256; do
      name=$(basename "$h" .sha256); read -r want n < "$h"
      [ -e "$stash/$name" ] && continue
      have=$( (ls "$stash/$name.parts" 2>/dev/null || true) | wc -l)
      if [ "$have" -lt "$n" ]; then echo "waiting for $name: $have of $n pieces"; continue; fi
      cat "$stash/$name.parts"/"$name".part* > "$stash/$name.tmp"
      got=$(sha256sum < "$stash/$name.tmp" | cut -d' ' -f1)
      if [ "$got" != "$want" ]; then echo "stage.sh: $name: sha256 $got != $want" >&2; rm -f "$stash/$name.tmp"; exit 1; fi
      mv "$stash/$name.tmp" "$stash/$name"; rm -rf "$stash/$name.parts"
      echo "staged $name ($(du -h "$stash/$name" | cut -f1))"
    done
    ;;
  status)
    stash=${2:?STASH_DIR}; ls -la "$stash" 2>/dev/null || echo "nothing staged in $stash"
    ;;
  *) echo "usage: stage.sh split|take|status ..." >&2; exit 2 ;;
esac
