#!/usr/bin/env bash
# Evaluation on Slurm:  [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS=...] tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [args]
# PYTHON=/path/to/python picks the interpreter (default: the repository's .venv, else `python`); see slurm_launch.sh.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
exec "$(dirname "${BASH_SOURCE[0]}")/slurm_launch.sh" test.py "$PARTITION" "$JOB_NAME" "$CONFIG" "$CHECKPOINT" "$@"
