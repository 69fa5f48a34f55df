"""mmcluster: clustering-based vision transformers for MMDetection and MMSegmentation.

Importing the package registers its backbones in mmdet's and mmseg's MODELS registries, its decode
heads in mmseg's, and its ImageNet classifiers in timm's model registry. It also makes mmengine's
checkpoint loaders safe for torch >= 2.6 (see :mod:`mmcluster.utils.checkpoint`).
"""
from .utils.checkpoint import install_safe_checkpoint_loading
from .version import __version__

install_safe_checkpoint_loading()

from . import models  # noqa: E402,F401  (registers everything)

__all__ = ['__version__']
