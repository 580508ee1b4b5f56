#!/usr/bin/env bash
# One-shot check of cfl-timm on one CUDA GPU, under 8 minutes: each step has its own timeout, together at most
# 475 s (docs/gpu.md).
# Usage: bench/gpu_check.sh OUT_DIR [DATA_DIR]
#   OUT_DIR   new or empty folder; every log, result and cache of the check goes there, nothing elsewhere.
#   DATA_DIR  a timm folder dataset (train/ and val/ class folders). Without it: a CIFAR-10 subset extracted from
#             $CFL_TIMM_DATA/cifar10-jpeg.tar.gz when present, else scikit-learn's digits.
#   --timm-train PATH (or TIMM_TRAIN=PATH): a timm checkout's train.py, for the throughput comparison.
# Environment: PYTHON (default: the repository's .venv, else python3), CFL_TIMM_DATA.
# Exit codes: 0 all steps passed or skipped, 1 a step failed, 2 usage error, 3 no CUDA.
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [DATA_DIR] [--timm-train PATH]  (see docs/gpu.md)" >&2; exit 2; }
POSITIONAL=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --timm-train) [[ $# -ge 2 ]] || usage; TIMM_TRAIN=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
[[ ${#POSITIONAL[@]} -ge 1 && ${#POSITIONAL[@]} -le 2 ]] || usage
OUT=${POSITIONAL[0]}
DATA_DIR=${POSITIONAL[1]:-}
TIMM_TRAIN=${TIMM_TRAIN:-}
if [[ -n "$DATA_DIR" && ! -d "$DATA_DIR/train" ]]; then
  echo "$0: DATA_DIR $DATA_DIR has no train/ folder (expected a timm folder dataset: train/ and val/)" >&2; exit 2
fi
if [[ -n "$TIMM_TRAIN" && ! -f "$TIMM_TRAIN" ]]; then
  echo "$0: --timm-train/TIMM_TRAIN $TIMM_TRAIN is not a file (expected a timm checkout's train.py)" >&2; exit 2
fi
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  echo "$0: OUT_DIR $OUT is not empty; choose a new folder (a previous check is never overwritten)" >&2; exit 2
fi
mkdir -p "$OUT" || exit 2
# Absolute paths: the steps run from the repository root.
OUT=$(cd "$OUT" && pwd)
[[ -z "$DATA_DIR" ]] || DATA_DIR=$(cd "$DATA_DIR" && pwd)
[[ -z "$TIMM_TRAIN" ]] || TIMM_TRAIN="$(cd "$(dirname "$TIMM_TRAIN")" && pwd)/$(basename "$TIMM_TRAIN")"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
# Keep every cache and temporary file inside OUT_DIR.
export PYTHONDONTWRITEBYTECODE=1 TMPDIR="$OUT/tmp" TORCHINDUCTOR_CACHE_DIR="$OUT/cache/inductor" \
  TRITON_CACHE_DIR="$OUT/cache/triton" MPLCONFIGDIR="$OUT/cache/matplotlib" XDG_CACHE_HOME="$OUT/cache"
mkdir -p "$TMPDIR"
cd "$REPO_DIR" || exit 2
CHECK=(-m bench.gpu_check)  # from the repository root (cd above): it imports its train.py

# step NAME TIMEOUT_S CMD...: run CMD with a timeout, its output in OUT/NAME.log; one line in OUT/steps.tsv.
step() {
  local name=$1 limit=$2 start code ms
  shift 2
  start=$(date +%s%N)
  echo "== $name (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  code=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%s\t%s\t%d.%03d\t\n' "$name" "$code" $((ms / 1000)) $((ms % 1000)) >>"$OUT/steps.tsv"
  echo "   exit $code, log $OUT/$name.log"
  return $code
}
skip() { printf '%s\tskip\t0\t%s\n' "$1" "$2" >>"$OUT/steps.tsv"; echo "== $1 skipped: $2"; }

# 1. The first CUDA call: stop here without a GPU.
timeout --kill-after=10 30 "$PYTHON" "${CHECK[@]}" cuda "$OUT" >"$OUT/cuda.log" 2>&1
code=$?
if [[ $code -eq 3 ]]; then
  echo "$0: no CUDA device (torch.cuda.is_available() is False); wrote $OUT/summary.json" >&2; exit 3
elif [[ $code -ne 0 ]]; then
  echo "$0: the CUDA check failed (exit $code); see $OUT/cuda.log" >&2; exit 1
fi
: >"$OUT/steps.tsv"

# Data: DATA_DIR, else a CIFAR-10 subset, else digits.
if [[ -z "$DATA_DIR" && -f "${CFL_TIMM_DATA:-}/cifar10-jpeg.tar.gz" ]]; then
  if step data 45 "$PYTHON" -m cfl_timm.grid prepare-data --archive "$CFL_TIMM_DATA/cifar10-jpeg.tar.gz" \
      --out "$OUT/cifar10" --train-per-class 500 --val-per-class 100; then
    DATA_DIR=$(tail -n 1 "$OUT/data.log")
  fi
fi
if [[ -n "$DATA_DIR" ]]; then
  DATA=(--data-dir "$DATA_DIR" --model resnet18 --num-classes 10 --img-size 32 -b 256 -j 4)
else
  DATA=(--dataset sklearn/digits --model test_resnet --img-size 32 -b 64 -j 0)
fi
TRAIN=("${DATA[@]}" --epochs 2 --warmup-epochs 0 --lr 0.05 --log-interval 50 --device cuda --seed 0)

# 2. Loss benchmark on CUDA: float32, autocast bfloat16 and float16.
for mode in none bf16 fp16; do
  step "loss_speed_$mode" 20 "$PYTHON" bench/loss_speed.py --device cuda --repeats 10 --autocast "$mode"
done

# 3. Two-epoch training: --amp --channels-last, then --torchcompile.
step train_amp 45 "$PYTHON" "${CHECK[@]}" train "$OUT/train_amp.json" -- "${TRAIN[@]}" --amp --channels-last \
  --output "$OUT/runs" --experiment amp
step train_compile 145 "$PYTHON" "${CHECK[@]}" train "$OUT/train_compile.json" -- "${TRAIN[@]}" --torchcompile \
  --output "$OUT/runs" --experiment compile

# 4. A float16 overflow that the GradScaler skips.
step fp16_overflow 30 "$PYTHON" "${CHECK[@]}" overflow "$OUT/fp16_overflow.json" "$OUT/runs"

# 5. torchrun with one process: NCCL on CUDA.
step distributed 40 ./distributed_train.sh 1 --dataset sklearn/digits --model test_resnet --img-size 32 -b 64 \
  -j 0 --epochs 1 --warmup-epochs 0 --lr 0.05 --device cuda --output "$OUT/runs" --experiment distributed

# 6. Throughput against timm's own train.py, same flags, end-to-end wall clock of each.
if [[ -z "$TIMM_TRAIN" ]]; then
  skip timm_compare "no timm train.py given (--timm-train PATH or TIMM_TRAIN; it is not in the timm wheel)"
elif [[ -z "$DATA_DIR" ]]; then
  skip timm_compare "needs a folder dataset (DATA_DIR or \$CFL_TIMM_DATA/cifar10-jpeg.tar.gz); timm has no digits"
else
  CMP=("${TRAIN[@]}" --amp --channels-last)
  step timm_train 40 "$PYTHON" "$TIMM_TRAIN" "${CMP[@]}" --output "$OUT/runs" --experiment timm_train
  step cfl_train 40 "$PYTHON" train.py "${CMP[@]}" --output "$OUT/runs" --experiment cfl_train
fi

"$PYTHON" "${CHECK[@]}" summarize "$OUT"
