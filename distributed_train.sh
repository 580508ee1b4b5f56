#!/usr/bin/env bash
# Launch train.py on NUM_PROC processes of this machine with torchrun (gloo on CPU, nccl on CUDA).
# Usage: ./distributed_train.sh NUM_PROC [train.py args...]
# Relative paths in the arguments are taken from the current directory. PYTHON overrides the interpreter
# (default: the repository's .venv when present, else python3).
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROC [train.py args...]  (NUM_PROC: number of processes, >= 1)" >&2
  exit 2
fi
NUM_PROC=$1
shift
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
# cfl_timm/training/launch.py is torchrun with a log folder that is removed at the end (torchrun leaves one in TMPDIR).
exec "$PYTHON" "$REPO_DIR/cfl_timm/training/launch.py" --standalone --nproc_per_node="$NUM_PROC" "$REPO_DIR/train.py" "$@"
