"""mmcluster: clustering-based vision transformers for MMDetection and MMSegmentation.

Importing the package registers its ImageNet classifiers in timm's model registry, which needs torch,
timm and einops only. Where the OpenMMLab stack is installed it also
* hooks its backbones and decode heads into mmdet's and mmseg's MODELS registries (imported when those
  registries are first used, see :mod:`mmcluster.registry`),
* makes mmengine's checkpoint loaders safe (see :mod:`mmcluster.utils.checkpoint`),
* lets configs inherit ours as ``_base_ = ['mmcluster::...']`` (see :mod:`mmcluster.utils.mim`),
* registers its mmengine hooks (see :mod:`mmcluster.engine`).
"""

from . import models  # noqa: F401  (registers the timm models)
from .registry import hook_into_registries, installed
from .version import __version__

if installed('mmengine'):
    from .utils.checkpoint import install_safe_checkpoint_loading
    from .utils.mim import register_mim_package

    install_safe_checkpoint_loading()
    register_mim_package()
    hook_into_registries()
    from . import engine  # noqa: F401,E402  (registers RNGStateHook in mmengine's HOOKS)

__all__ = ['__version__']
