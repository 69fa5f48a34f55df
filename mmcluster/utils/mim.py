"""``mmcluster::`` config paths for mmengine, e.g. in a user's config::

    _base_ = ['mmcluster::paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py']

mmengine (0.10) resolves ``pkg::path`` through a fixed table of OpenMMLab packages
(``mmengine.config.utils.MODULE2PACKAGE``, alias ``PKG2PROJECT``) and
``mmengine.utils.get_installed_path(pkg)``, and then reads ``<package>/.mim/model-index.yml`` and
``<package>/.mim/configs/<path>``. :func:`register_mim_package` (called when mmcluster is imported) makes
that work for mmcluster:

* it adds ``mmcluster`` to the table;
* it makes ``get_installed_path('mmcluster')`` return the directory of the *imported* package.
  mmengine's own answer is ``<dist location>/mmcluster``, which for an editable install is a
  ``site-packages/mmcluster`` that does not exist;
* it resolves ``mmcluster::`` bases without an mmengine scope. mmengine gives every typed top-level
  dict of a ``pkg::`` base ``_scope_='pkg'``; mmcluster has no registry scope of its own (its modules
  live in mmdet's and mmseg's registries) and its configs are ordinary mmdet / mmseg configs whose
  ``default_scope`` says where to build, so an ``mmcluster::`` base must load exactly like the same file
  inherited by path.

Where ``.mim`` comes from: a wheel or a regular ``pip install .`` copies ``configs/`` and
``model-index.yml`` into ``mmcluster/.mim/`` (``setup.py``); an editable install
(``pip install -e .``) links ``mmcluster/.mim/configs`` and ``mmcluster/.mim/model-index.yml`` to the
checkout's ``configs/`` and ``model-index.yml``, so edits there are seen at once.
"""

from __future__ import annotations

import functools
import os.path as osp
import sys

PACKAGE = 'mmcluster'
PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
_WRAPPED = '__mmcluster_original__'


def mim_dir() -> str:
    """``<installed mmcluster>/.mim``: ``configs/`` and ``model-index.yml`` as mmengine expects them."""
    return osp.join(PACKAGE_DIR, '.mim')


def _check_mim_dir() -> None:
    missing = [name for name in ('configs', 'model-index.yml') if not osp.exists(osp.join(mim_dir(), name))]
    if missing:
        raise FileNotFoundError(
            f'mmcluster:: configs need {", ".join(osp.join(mim_dir(), m) for m in missing)}, which the '
            f'installation creates: reinstall mmcluster (`pip install .`, or `pip install -e .` in a '
            f'checkout, which links them to the checkout), or inherit the config by its path instead.'
        )


def _wrap_get_installed_path(original):
    if hasattr(original, _WRAPPED):
        return original

    @functools.wraps(original)
    def get_installed_path(package: str) -> str:
        if package == PACKAGE:
            return PACKAGE_DIR
        return original(package)

    setattr(get_installed_path, _WRAPPED, original)
    return get_installed_path


def _wrap_get_cfg_path(original):
    if hasattr(original, _WRAPPED):
        return original

    @functools.wraps(original)
    def _get_cfg_path(cfg_path: str, filename: str):
        is_ours = isinstance(cfg_path, str) and cfg_path.startswith(f'{PACKAGE}::')
        if is_ours:
            _check_mim_dir()
        path, scope = original(cfg_path, filename)
        return (path, None) if is_ours else (path, scope)

    setattr(_get_cfg_path, _WRAPPED, original)
    return _get_cfg_path


def register_mim_package() -> None:
    """Make ``mmcluster::`` paths resolvable by mmengine's ``Config`` (idempotent, cheap)."""
    import mmengine.utils
    import mmengine.utils.package_utils
    from mmengine.config import config as config_module
    from mmengine.config import utils as config_utils
    from mmengine.config.config import Config

    # The same dict object is imported by name in mmengine.registry and mmengine.infer.
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    # Every module that holds get_installed_path by name (mmengine.hub, if imported later, takes the
    # wrapped one from mmengine.utils).
    for module in (mmengine.utils.package_utils, mmengine.utils, config_module, sys.modules.get('mmengine.hub.hub')):
        if module is not None and hasattr(module, 'get_installed_path'):
            module.get_installed_path = _wrap_get_installed_path(module.get_installed_path)
    Config._get_cfg_path = staticmethod(_wrap_get_cfg_path(Config._get_cfg_path))


def is_registered() -> bool:
    """Whether :func:`register_mim_package` has run in this process."""
    from mmengine.config import config as config_module
    from mmengine.config import utils as config_utils

    return (
        config_utils.MODULE2PACKAGE.get(PACKAGE) == PACKAGE
        and hasattr(config_module.get_installed_path, _WRAPPED)
        and hasattr(config_module.Config._get_cfg_path, _WRAPPED)
    )
