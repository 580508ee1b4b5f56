#!/usr/bin/env bash
# Launch train.py on NUM_PROC processes of this machine with torchrun (gloo on CPU, nccl on CUDA).
# Usage: ./distributed_train.sh NUM_PROC [train.py args...]
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROC [train.py args...]  (NUM_PROC: number of processes, >= 1)" >&2
  exit 2
fi
NUM_PROC=$1
shift
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NUM_PROC" train.py "$@"
