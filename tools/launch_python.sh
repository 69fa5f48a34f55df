# Sourced by dist_launch.sh and slurm_launch.sh: `launch_python NAME` chooses the interpreter that runs
# the tools and checks that it can import mmcluster.
#
# PYTHON (if set), else .venv/bin/python at the repository root (made by tools/setup_env.sh) when it exists,
# else `python` on the PATH. Sets PYTHON, prints "NAME: Python: ... (why)" to stderr, and exits 1 with a
# message naming the interpreter when it cannot `import mmcluster`. The check runs from tools/, as the tool
# will (a script's folder comes first on sys.path), so that a mmcluster/ folder in the current directory
# does not make it pass when the tool would fail.
launch_python() {
  local name=$1 root origin found
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -n "${PYTHON:-}" ]; then
    origin="from \$PYTHON"
  elif [ -x "$root/.venv/bin/python" ]; then
    PYTHON="$root/.venv/bin/python"
    origin="the repository's .venv"
  else
    PYTHON=python
    origin="no $root/.venv/bin/python, so \`python\` from the PATH; set PYTHON to choose another"
  fi
  if ! found=$(cd "$root/tools" && "$PYTHON" -c \
      'import sys, mmcluster; print(sys.executable, "with mmcluster", mmcluster.__version__, "from", mmcluster.__file__)' 2>&1); then
    echo "$name: error: the Python interpreter '$PYTHON' ($origin) cannot import mmcluster:" >&2
    echo "$found" | tail -n 3 | sed 's/^/    /' >&2
    echo "Run tools/setup_env.sh (creates $root/.venv), or set PYTHON=/path/to/python of an environment where" >&2
    echo "mmcluster is installed (pip install -e $root)." >&2
    exit 1
  fi
  echo "$name: Python: ${found} ($origin)" >&2
}
