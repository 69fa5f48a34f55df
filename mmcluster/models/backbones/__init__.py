"""Backbone families. Each file is one family: its timm classifiers (registered in timm on import) and
its mmdet / mmseg backbone (registered by mmcluster.registry where those packages are installed)."""

from .base import BackboneContract, HierarchicalViT
from .paca_vit import PaCaViT, PaCaViTClassifier
from .secvit import SecViT, SecViTClassifier

# the backbones that mmcluster.registry registers in mmdet's and mmseg's MODELS
MM_BACKBONES = (PaCaViT, SecViT)

__all__ = [
    'BackboneContract',
    'HierarchicalViT',
    'MM_BACKBONES',
    'PaCaViT',
    'PaCaViTClassifier',
    'SecViT',
    'SecViTClassifier',
]
