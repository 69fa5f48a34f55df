"""The one build step pyproject.toml cannot express: mmengine's ``mmcluster/.mim`` directory.

All metadata is in pyproject.toml. mmengine resolves ``_base_ = ['mmcluster::paca_vit/...py']`` to
``<installed mmcluster>/.mim/configs/paca_vit/...py`` and reads ``.mim/model-index.yml`` (see
``mmcluster/utils/mim.py``), as it does for mmdet and mmseg. So:

* a wheel (``pip install .``, ``pip wheel .``, ``python -m build``) gets a copy of ``configs/`` and
  ``model-index.yml`` in ``mmcluster/.mim/``;
* an editable install (``pip install -e .``) links ``mmcluster/.mim/configs`` and
  ``mmcluster/.mim/model-index.yml`` in the checkout to ``configs/`` and ``model-index.yml`` (a copy
  where links are not possible), so edits to the configs are seen without reinstalling.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MIM_SOURCES = ('configs', 'model-index.yml')  # relative to ROOT, mirrored under mmcluster/.mim/
IGNORE = shutil.ignore_patterns('__pycache__', '*.py[cod]')


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def copy_mim(mim: Path) -> None:
    _remove(mim)
    mim.mkdir(parents=True)
    for name in MIM_SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, mim / name, ignore=IGNORE)
        else:
            shutil.copy2(src, mim / name)


def link_mim(mim: Path) -> None:
    mim.mkdir(parents=True, exist_ok=True)
    for name in MIM_SOURCES:
        dst = mim / name
        _remove(dst)
        try:
            os.symlink(os.path.relpath(ROOT / name, mim), dst, target_is_directory=(ROOT / name).is_dir())
        except OSError:  # no symlinks here (e.g. Windows without the privilege): a copy, refreshed on reinstall
            copy_mim(mim)
            return


class BuildPyWithMim(build_py):
    """build_py, then mmcluster/.mim: copied into the build for wheels, linked in place for editable installs."""

    def run(self):
        super().run()
        missing = [name for name in MIM_SOURCES if not (ROOT / name).exists()]
        if missing:
            raise FileNotFoundError(f'cannot build mmcluster/.mim: {missing} missing in {ROOT}')
        if getattr(self, 'editable_mode', False):
            link_mim(ROOT / 'mmcluster' / '.mim')
        else:
            copy_mim(Path(self.build_lib) / 'mmcluster' / '.mim')


setup(cmdclass={'build_py': BuildPyWithMim})
