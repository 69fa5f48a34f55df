#!/usr/bin/env bash
# Distributed training:  tools/dist_train.sh CONFIG NUM_GPUS [tools/train.py args]
# Several nodes: NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 PORT=29500 tools/dist_train.sh CONFIG 8 ...
# Works on machines without GPUs too (NUM_GPUS CPU processes, gloo backend).
# PYTHON=/path/to/python picks the interpreter (default: the repository's .venv, else `python` on the
# PATH); it must be able to `import mmcluster`. See tools/dist_launch.sh.
set -euo pipefail
CONFIG=$1
GPUS=$2
shift 2
exec "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh" train.py "$GPUS" "$CONFIG" "$@"
