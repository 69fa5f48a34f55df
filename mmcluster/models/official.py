"""Official PaCa-ViT checkpoints (iVMCL/PaCaViT; spec §3) -> mmcluster's module layout."""
from __future__ import annotations

from collections import OrderedDict

import torch

from .backbones.paca_vit import convert_official_state_dict, is_official_state_dict
from .decode_heads.paca_head import convert_official_head_state_dict

OFFICIAL_HEAD_MARKERS = ('q.0.', 'clustering.0.', 'k.0.', 'v.0.')


def _split(state_dict: dict, prefix: str) -> tuple[dict, dict]:
    inside = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
    outside = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(prefix))
    return inside, outside


def convert_official_paca_checkpoint(state_dict: dict) -> tuple['OrderedDict[str, torch.Tensor]', str]:
    """Convert the weights of an official ImageNet, COCO (Mask R-CNN) or ADE20K (PaCa head / UperNet)
    checkpoint. Returns the converted state dict and what it was (``imagenet``, ``detection`` or
    ``segmentation``).

    The backbone (keys ``stage1.*`` ... or ``backbone.stage1.*``) and the official PaCa segmentation head
    (``decode_head.q.0.*`` ...) are renamed; mmdet/mmseg's own necks and heads are kept as they are.
    """
    if not any(k.startswith('backbone.') for k in state_dict):
        if not is_official_state_dict(state_dict):
            raise ValueError('not an official PaCa-ViT state dict (no stage1.*, norm1.*, transition1.* or '
                             'paca_teacher.* keys)')
        return convert_official_state_dict(state_dict), 'imagenet'
    backbone, rest = _split(state_dict, 'backbone.')
    if not is_official_state_dict(backbone):
        raise ValueError('the backbone.* keys are not in the official PaCa-ViT layout')
    converted = OrderedDict((f'backbone.{k}', v) for k, v in convert_official_state_dict(backbone).items())
    head, rest = _split(rest, 'decode_head.')
    if head and any(k.startswith(OFFICIAL_HEAD_MARKERS) for k in head):
        head = convert_official_head_state_dict(head)
    converted.update((f'decode_head.{k}', v) for k, v in head.items())
    converted.update(rest)
    kind = 'segmentation' if head else 'detection'
    return converted, kind
