#!/usr/bin/env bash
# torchrun a tool of this folder:  tools/dist_launch.sh TOOL.py NUM_PROCESSES [tool args]
# (used by dist_train.sh and dist_test.sh; NNODES, NODE_RANK, MASTER_ADDR, PORT for several nodes)
#
# PYTHON: the interpreter that runs torchrun and the tool. Default: .venv/bin/python at the repository
#   root (made by tools/setup_env.sh) when it exists, else `python` on the PATH. The script prints which
#   one it uses and stops if that interpreter cannot `import mmcluster` (install it there with
#   `pip install -e .`, or point PYTHON at an environment that has it). The tool imports mmcluster as an
#   installed package; the repository is not put on PYTHONPATH.
set -euo pipefail
TOOL=$1
PROCS=$2
shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch_python.sh
source "$ROOT/tools/launch_python.sh"
launch_python dist_launch.sh
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" --nproc_per_node="$PROCS" "$ROOT/tools/$TOOL" "$@" --launcher pytorch
