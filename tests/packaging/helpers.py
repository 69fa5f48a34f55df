"""Shared by the packaging tests: running Python outside the repository, and faster config loading."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.tools_helpers import ROOT

# What a source distribution of mmcluster consists of (pyproject.toml, setup.py and MANIFEST.in decide
# what goes into the sdist and the wheel; this is everything they may refer to).
SOURCE_FILES = ['pyproject.toml', 'setup.py', 'MANIFEST.in', 'README.md', 'LICENSE', 'model-index.yml']
SOURCE_DIRS = ['mmcluster', 'configs', 'requirements', 'docs']


def copy_sources(dst: Path) -> Path:
    """A copy of the files a build of mmcluster reads, without caches and without mmcluster/.mim."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.mim')
    for name in SOURCE_DIRS:
        shutil.copytree(ROOT / name, dst / name, ignore=ignore, symlinks=False)
    return dst


def python_outside_repo(code: str, cwd: Path, pythonpath: str | None = None, timeout: int = 300) -> dict:
    """Run ``code`` with this interpreter in ``cwd`` (not the repository: the repo is not on sys.path);
    the code prints one JSON line last, which is returned."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    env['PYTHONWARNINGS'] = 'ignore'
    proc = subprocess.run(
        [sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f'failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pip_install_target(src: Path, target: Path) -> None:
    """`pip install --target` of a source tree, offline (no dependencies, no build isolation)."""
    cmd = [
        sys.executable,
        '-m',
        'pip',
        'install',
        '--disable-pip-version-check',
        '--quiet',
        '--no-deps',
        '--no-build-isolation',
        '--no-compile',
        '--no-index',
        '--target',
        str(target),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{" ".join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'


def cache_metafile_reads(monkeypatch) -> None:
    """mmengine re-reads every metafile of mmdet / mmseg (about 400 YAML files) for each `mmdet::` /
    `mmseg::` base, and reloads pkg_resources; cache both for the duration of a test (same results)."""
    import mmengine.config.config as config_module
    import mmengine.config.utils as config_utils

    original = config_utils.load
    cache = {}

    def load(path, *args, **kwargs):
        if isinstance(path, str) and path.endswith(('.yml', '.yaml')) and not args and not kwargs:
            if path not in cache:
                cache[path] = original(path)
            return cache[path]
        return original(path, *args, **kwargs)

    monkeypatch.setattr(config_utils, 'load', load)
    monkeypatch.setattr(config_module, 'is_installed', functools.lru_cache(None)(config_module.is_installed))
