#!/usr/bin/env bash
# torchrun a tool of this folder:  tools/dist_launch.sh TOOL.py NUM_PROCESSES [tool args]
# (used by dist_train.sh and dist_test.sh; NNODES, NODE_RANK, MASTER_ADDR, PORT for several nodes)
set -euo pipefail
TOOL=$1
PROCS=$2
shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python )}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" --nproc_per_node="$PROCS" "$ROOT/tools/$TOOL" "$@" --launcher pytorch
