"""mmcluster's backbones and decode heads in mmseg's MODELS registry (imported by that registry; see
mmcluster.registry). The decode heads register themselves when their module is imported."""

from mmseg.models.backbones import SwinTransformer
from mmseg.registry import MODELS

from . import decode_heads  # noqa: F401  (registers PaCaHead)
from .backbones import MM_BACKBONES
from .backbones.expedite import HourglassEncoderDecoder, HourglassVisionTransformer
from .backbones.expedite_swin import HourglassSwinMixin
from .backbones.sec_swin import SECSwinMixin

for _module in (*MM_BACKBONES, HourglassVisionTransformer, HourglassEncoderDecoder):
    MODELS.register_module(module=_module)


@MODELS.register_module()
class SECSwinTransformer(SECSwinMixin, SwinTransformer):
    """SEC-Swin on mmseg's ``SwinTransformer``: every window attention replaced by SECA (see
    :mod:`mmcluster.models.backbones.sec_swin` for the arguments and the choices made)."""


@MODELS.register_module()
class HourglassSwinTransformer(HourglassSwinMixin, SwinTransformer):
    """Expedite on mmseg's ``SwinTransformer`` (e.g. UperNet Swin-L): window token clustering after block
    ``cluster_after`` and reconstruction at the end of its stage; the state dict is upstream's (see
    :mod:`mmcluster.models.backbones.expedite_swin`)."""
