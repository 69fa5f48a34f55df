#!/usr/bin/env bash
# srun a tool of this folder:  tools/slurm_launch.sh TOOL.py PARTITION JOB_NAME [tool args]
# (used by slurm_train.sh and slurm_test.sh; GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS)
set -euo pipefail
TOOL=$1
PARTITION=$2
JOB_NAME=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python )}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec srun -p "$PARTITION" --job-name="$JOB_NAME" \
  --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
  "$PYTHON" -u "$ROOT/tools/$TOOL" "$@" --launcher=slurm
