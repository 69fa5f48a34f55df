#!/usr/bin/env bash
# srun a tool of this folder:  tools/slurm_launch.sh TOOL.py PARTITION JOB_NAME [tool args]
# (used by slurm_train.sh and slurm_test.sh; GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS)
#
# PYTHON: the interpreter the tasks run. Default: .venv/bin/python at the repository root (made by
#   tools/setup_env.sh) when it exists, else `python` on the PATH. The script prints which one it uses
#   and stops if that interpreter cannot `import mmcluster` here (checked on the submitting host; the
#   nodes must see the same environment). The repository is not put on PYTHONPATH.
set -euo pipefail
TOOL=$1
PARTITION=$2
JOB_NAME=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch_python.sh
source "$ROOT/tools/launch_python.sh"
launch_python slurm_launch.sh
exec srun -p "$PARTITION" --job-name="$JOB_NAME" \
  --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
  "$PYTHON" -u "$ROOT/tools/$TOOL" "$@" --launcher=slurm
