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
if [ -n "${PYTHON:-}" ]; then
  ORIGIN="from \$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PYTHON="$ROOT/.venv/bin/python"
  ORIGIN="the repository's .venv"
else
  PYTHON=python
  ORIGIN="no $ROOT/.venv/bin/python, so \`python\` from the PATH; set PYTHON to choose another"
fi
# run from tools/ as the tool will be (a script's folder comes first on sys.path), so that a mmcluster/
# folder in the current directory does not make the check pass when the tool would fail
if ! FOUND=$(cd "$ROOT/tools" && "$PYTHON" -c \
    'import sys, mmcluster; print(sys.executable, "with mmcluster", mmcluster.__version__, "from", mmcluster.__file__)' 2>&1); then
  echo "dist_launch.sh: error: the Python interpreter '$PYTHON' ($ORIGIN) cannot import mmcluster:" >&2
  echo "$FOUND" | tail -n 3 | sed 's/^/    /' >&2
  echo "Run tools/setup_env.sh (creates $ROOT/.venv), or set PYTHON=/path/to/python of an environment where" >&2
  echo "mmcluster is installed (pip install -e $ROOT)." >&2
  exit 1
fi
echo "dist_launch.sh: Python: ${FOUND} ($ORIGIN)" >&2
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" --nproc_per_node="$PROCS" "$ROOT/tools/$TOOL" "$@" --launcher pytorch
