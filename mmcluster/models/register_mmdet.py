"""mmcluster's backbones in mmdet's MODELS registry (imported by that registry; see mmcluster.registry)."""

from mmdet.models.backbones import SwinTransformer
from mmdet.registry import MODELS

from .backbones import MM_BACKBONES
from .backbones.expedite_swin import HourglassSwinMixin
from .backbones.sec_swin import SECSwinMixin

for _backbone in MM_BACKBONES:
    MODELS.register_module(module=_backbone)


@MODELS.register_module()
class SECSwinTransformer(SECSwinMixin, SwinTransformer):
    """SEC-Swin on mmdet's ``SwinTransformer``: every window attention replaced by SECA (see
    :mod:`mmcluster.models.backbones.sec_swin` for the arguments and the choices made)."""


@MODELS.register_module()
class HourglassSwinTransformer(HourglassSwinMixin, SwinTransformer):
    """Expedite on mmdet's ``SwinTransformer`` (e.g. Mask2Former Swin-L): window token clustering after block
    ``cluster_after`` and reconstruction at the end of its stage; the state dict is upstream's (see
    :mod:`mmcluster.models.backbones.expedite_swin`)."""
