"""Registration of mmcluster's modules into the OpenMMLab registries that use them.

Backbones go into both ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` (so configs with either
``default_scope`` find them); segmentation heads into mmseg's.
"""
from mmdet.registry import MODELS as DET_MODELS
from mmseg.registry import MODELS as SEG_MODELS


def register_backbone(cls: type) -> type:
    DET_MODELS.register_module(module=cls)
    SEG_MODELS.register_module(module=cls)
    return cls


def register_seg_module(cls: type) -> type:
    SEG_MODELS.register_module(module=cls)
    return cls
