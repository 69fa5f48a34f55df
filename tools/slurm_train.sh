#!/usr/bin/env bash
# Training on Slurm:  [GPUS=16 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS=...] tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [args]
# PYTHON=/path/to/python picks the interpreter (default: the repository's .venv, else `python`); see slurm_launch.sh.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_launch.sh" train.py "$PARTITION" "$JOB_NAME" "$CONFIG" --work-dir="$WORK_DIR" "$@"
