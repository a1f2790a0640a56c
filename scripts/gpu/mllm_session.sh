#!/usr/bin/env bash
# One step of the H200 session for the LLaVA and text-to-image experiments (issues 17 and 18),
# run once per device call from the repository root. Each call carries one folder of pieces made
# by scripts/gpu/pack.sh (.gpu/call); the pieces are staged into .gpu/stash (kept by the warm
# machine between calls) and unpacked into .gpu/work once complete:
#   bins.tar.xz    the bundle (run.sh, bin/semhitok, bench binaries)  -> .gpu/work/bundle
#   wheels.tar     peft + accelerate wheels (the host has no peft)     -> .gpu/py (PYTHONPATH)
#   smollm2.gguf   SmolLM2-135M-Instruct Q4_1 (98 MB)                  -> .gpu/stash/smollm2.gguf
#   tok.tar.xz     the Fashion-MNIST tokenizers without their shared teacher + one teacher copy
#                  (scripts/gpu/split_teacher.py)                      -> .gpu/work/fmnist/<name>/model
#   tokens.tar.xz  their token shards                                  -> .gpu/work/fmnist/<name>/tokens
#   fmnist.tar     the Fashion-MNIST IDX files                         -> .gpu/work/fm
#   inception.pt   the FID Inception (87 MB)                           -> .gpu/stash/inception.pt
# Usage: scripts/gpu/mllm_session.sh STEP [args]   (STEP: none | anything; runs "$@" after staging)
set -uo pipefail
mkdir -p .gpu/stash .gpu/work
. "$(dirname "$0")/build_root.sh"
CALL=${CALL:-.gpu/call}
[ -d "$CALL" ] && scripts/gpu/stage.sh take "$CALL" .gpu/stash
S=.gpu/stash; W=.gpu/work
unpack() { # NAME MARKER CMD...
  local name=$1 marker=$2; shift 2
  if [ -e "$S/$name" ] && [ ! -e "$marker" ]; then echo "unpack $name" >&2; "$@" && touch "$marker"; fi
}
xzcat_py() { python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)" "$1"; }
unpack bins.tar.xz "$W/.bins" bash -c "mkdir -p $W/bundle && $(declare -f xzcat_py); xzcat_py $S/bins.tar.xz | tar -x -C $W/bundle"
link_build_root "$W/bundle"
unpack wheels.tar "$W/.wheels" bash -c "tar -xf $S/wheels.tar -C $W && pip install -q --no-deps --target .gpu/py $W/wheels/*.whl"
unpack tok.tar.xz "$W/.tok" bash -c "$(declare -f xzcat_py); xzcat_py $S/tok.tar.xz | tar -x -C $W && python3 scripts/gpu/split_teacher.py join $W/tok $W/fmnist"
unpack tokens.tar.xz "$W/.tokens" bash -c "mkdir -p $W/fmnist && $(declare -f xzcat_py); xzcat_py $S/tokens.tar.xz | tar -x -C $W/fmnist"
unpack fmnist.tar "$W/.fm" bash -c "tar -xf $S/fmnist.tar -C $W"
export PYTHONPATH=$PWD/.gpu/py${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
ls "$S" "$W" >&2
[ "${1:-none}" = none ] || "$@"
