"""mmcluster's backbones in mmdet's MODELS registry (imported by that registry; see mmcluster.registry)."""

from mmdet.registry import MODELS

from .backbones import MM_BACKBONES

for _backbone in MM_BACKBONES:
    MODELS.register_module(module=_backbone)
