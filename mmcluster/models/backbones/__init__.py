from ...registry import register_backbone
from .paca_vit import PaCaViT, PaCaViTClassifier

register_backbone(PaCaViT)

__all__ = ['PaCaViT', 'PaCaViTClassifier']
