"""mmcluster's backbones and decode heads in mmseg's MODELS registry (imported by that registry; see
mmcluster.registry). The decode heads register themselves when their module is imported."""

from mmseg.registry import MODELS

from . import decode_heads  # noqa: F401  (registers PaCaHead)
from .backbones import MM_BACKBONES

for _backbone in MM_BACKBONES:
    MODELS.register_module(module=_backbone)
