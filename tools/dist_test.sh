#!/usr/bin/env bash
# Distributed evaluation:  tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [tools/test.py args]
# PYTHON=/path/to/python picks the interpreter (default: the repository's .venv, else `python` on the
# PATH); it must be able to `import mmcluster`. See tools/dist_launch.sh.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
exec "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh" test.py "$GPUS" "$CONFIG" "$CHECKPOINT" "$@"
