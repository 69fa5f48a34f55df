#!/usr/bin/env bash
# Create (or repair) the project's virtual environment at <repo>/.venv with the stack pinned in
# requirements/pins.txt, mmcv 2.1.0 with compiled ops included.
#
#   bash tools/setup_env.sh            # idempotent; a second run with everything in place takes seconds
#
# mmcv 2.1.0 is published on PyPI only as an sdist. We look for a ready wheel, in this order:
#   1. our wheel cache  $MMCLUSTER_CACHE/wheels/<mmcv>-<torch>-<cuda>-<ops>-<python>/   (default ~/.cache/mmcluster)
#   2. every directory in $MMCLUSTER_WHEEL_DIRS (default: those in $PIP_FIND_LINKS, and ../shared/wheels
#      next to the checkout; set MMCLUSTER_WHEEL_DIRS= to skip them)
# Each candidate is installed and checked (`from mmcv.ops import RoIAlign, nms`, then both ops run, on
# the GPU too when there is one); a broken or ABI-mismatched wheel is rejected. If none passes, the sdist
# is built here with --no-build-isolation after torch, with its `-std=c++17` patched to C++20 (torch 2.14
# headers need it), and the wheel is stored in the cache. On a machine with CUDA the build compiles the
# CUDA ops (mmcv's own setup.py decides; set FORCE_CUDA=1 to force it).
#
# Environment: PYTHON (interpreter for the venv, default python3.11), MMCLUSTER_VENV, MMCLUSTER_CACHE,
# MAX_JOBS (parallel compile jobs for mmcv, default: number of cores).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMCLUSTER_VENV:-$ROOT/.venv}
PINS=$ROOT/requirements/pins.txt
CACHE=${MMCLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmcluster}
STAMP=$VENV/.mmcluster-setup

log() { printf '[setup_env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# `pin NAME` prints NAME's requirement line from pins.txt, e.g. "torch==2.14.1".
pin() {
  local line
  line=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$PINS" | grep -E "^$1([=<>!~ ]|$)" | head -n 1)
  [ -n "$line" ] || die "requirements/pins.txt has no pin for '$1'"
  printf '%s\n' "$line"
}

# `pins_except NAME...` prints every requirement line of pins.txt except the named packages.
pins_except() {
  local pattern
  pattern=$(printf '%s|' "$@")
  sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$PINS" | grep -v '^$' | grep -Ev "^(${pattern%|})([=<>!~ ]|$)"
}

stamp_key() {
  cat "$PINS" "$ROOT/tools/setup_env.sh" "$ROOT/tools/check_env.py" "$ROOT/pyproject.toml" "$ROOT/setup.py" |
    sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------------------------------------------
# 0. Fast path: everything already in place.
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_key)" ] &&
   "$VENV/bin/python" "$ROOT/tools/check_env.py" --quiet; then
  log "environment in $VENV is up to date"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------
# 1. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  PY=${PYTHON:-}
  if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
  fi
  command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=...)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "$PY is older than Python 3.9"
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    log "warning: $PY is not Python 3.11, the version the pins were verified with"
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
# Every install is constrained by all pins, so no dependency can pull in, e.g., setuptools >= 82.
CONSTRAINTS=$VENV/mmcluster-constraints.txt
sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$PINS" | grep -v '^$' >"$CONSTRAINTS"
pip_install() { "$VPY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

# 2. Build tools, then torch (mmcv compiles against it), then the pure-Python stack.
log "installing build tools"
pip_install -q --upgrade pip
pip_install -q "$(pin setuptools)" "$(pin wheel)" "$(pin ninja)"
log "installing $(pin torch) $(pin torchvision) (the first time this downloads several GB)"
pip_install "$(pin torch)" "$(pin torchvision)"
log "installing the OpenMMLab stack and the other dependencies"
mapfile -t REST < <(pins_except torch torchvision mmcv setuptools wheel ninja)
pip_install "${REST[@]}" "$(pin setuptools)"

# 3. mmcv with compiled ops.
MMCV_PIN=$(pin mmcv)
MMCV_VERSION=${MMCV_PIN#mmcv==}
mmcv_ok() { "$VPY" "$ROOT/tools/check_env.py" --mmcv-only --quiet; }
WHEEL_KEY=$("$VPY" - "$MMCV_VERSION" <<'EOF'
import os, sys, sysconfig
import torch
cuda_ops = torch.cuda.is_available() or os.environ.get('FORCE_CUDA', '0') == '1'
print('-'.join([
    f'mmcv{sys.argv[1]}', f'torch{torch.__version__}', f'cuda{torch.version.cuda or "none"}',
    'cudaops' if cuda_ops else 'cpuops', f'cp{sys.version_info[0]}{sys.version_info[1]}',
    sysconfig.get_platform().replace('-', '_')]))
EOF
)
WHEEL_DIR=$CACHE/wheels/$WHEEL_KEY
PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

try_wheel() {  # install one candidate wheel and keep it only if its ops work
  log "trying $1"
  if pip_install -q --no-deps --force-reinstall "$1" && mmcv_ok; then
    log "mmcv ops work with $1"
    return 0
  fi
  log "rejected $1 (its compiled ops do not load or do not run with this torch)"
  "$VPY" -m pip uninstall -y -q mmcv >/dev/null 2>&1 || true
  return 1
}

if "$VPY" -c 'import mmcv' 2>/dev/null && mmcv_ok; then
  log "installed mmcv $MMCV_VERSION works"
else
  found=
  candidates=()
  [ -d "$WHEEL_DIR" ] && candidates+=("$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl)
  for d in ${MMCLUSTER_WHEEL_DIRS-${PIP_FIND_LINKS:-} $ROOT/../shared/wheels}; do
    d=${d#file://}
    [ -d "$d" ] && candidates+=("$d"/mmcv-"$MMCV_VERSION"-"$PYTAG"-*.whl)
  done
  for whl in "${candidates[@]}"; do
    [ -f "$whl" ] || continue
    if try_wheel "$whl"; then
      found=$whl
      if [ "$(dirname "$whl")" != "$WHEEL_DIR" ]; then mkdir -p "$WHEEL_DIR" && cp -f "$whl" "$WHEEL_DIR/"; fi
      break
    fi
  done
  if [ -z "$found" ]; then
    log "no working mmcv $MMCV_VERSION wheel found: building it from the sdist (about 15 minutes on 2 cores)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "$VPY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
      -d "$BUILD" "$MMCV_PIN" || die "could not download the $MMCV_PIN sdist"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC=$BUILD/mmcv-$MMCV_VERSION
    # torch >= 2.14 headers use C++20 features; mmcv 2.1.0 hard-codes -std=c++17 for C++ and nvcc.
    grep -q -- '-std=c++17' "$SRC/setup.py" || die "mmcv setup.py no longer contains -std=c++17; check the patch"
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    mkdir -p "$WHEEL_DIR"
    log "compiling mmcv ops with MAX_JOBS=${MAX_JOBS:-$(nproc)} (progress below)"
    (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$VPY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps -v -w "$WHEEL_DIR" . \
      2>&1 | grep -E --line-buffered -o '\[[0-9]+/[0-9]+\] [^ ]+|error:.*|Created wheel.*' >&2) ||
      die "building mmcv failed (see the output above)"
    whl=$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
    try_wheel "$whl" || die "the freshly built $whl does not work"
  fi
fi

# 4. mmcluster itself, editable (metadata in pyproject.toml; setup.py links mmcluster/.mim/{configs,
#    model-index.yml} to the checkout, which `mmcluster::` config paths resolve through).
log "installing mmcluster (editable)"
pip_install -q --no-deps --no-build-isolation -e "$ROOT"

"$VPY" "$ROOT/tools/check_env.py" || die "the environment check failed"
stamp_key >"$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
