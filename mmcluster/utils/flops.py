"""Operation counting with ``torch.utils.flop_counter.FlopCounterMode``.

Convention (what the PaCa-ViT paper reports as "FLOPs"): count multiply-accumulates (MACs) of
convolutions and matrix products, attention's two products (QK^T and AV) and the clustering product
C^T X included; element-wise ops, norms and softmax are not counted. FlopCounterMode counts 2 FLOPs per
MAC, so MACs = FLOPs / 2.

mmengine's counter has no handler for ``scaled_dot_product_attention``. FlopCounterMode has, for the
CUDA kernels, but not for the fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``); it is
registered here with torch's own SDPA formula.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from ..models.layers.row_bands import FUSED_CONV, ONEDNN_LINEAR

aten = torch.ops.aten


def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _torchprofile_conv_flop(
    x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape=None, **kwargs
) -> int:
    """torchprofile counts every convolution as prod(output shape) x prod(weight shape[1:]). For a normal
    conv that is its MACs; a transposed conv's weight is (C_in, C_out / groups, k, k), so a stride-s
    transposed conv is counted s^2 times its MACs (e.g. the Mask R-CNN mask head's upsampling)."""
    if not transposed:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)
    return 2 * math.prod(out_shape) * math.prod(w_shape[1:])


def _fused_conv_flop(x_shape, w_shape, bias, padding, stride, dilation, groups, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's convolution with a fused activation (mmcluster's depth-wise convs + GELU in CPU inference,
    :func:`~mmcluster.models.layers.row_bands.conv_rows`): the convolution's count."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's matmul for linear layers (:func:`~mmcluster.models.layers.row_bands.onednn_linear`,
    ``linear_tokens_last`` and ``batched_matmul`` in CPU inference; :func:`~mmcluster.models.layers.row_bands.linear`
    where it is set to oneDNN): ``addmm``'s count, 2 x tokens x in x out."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


# torch's FLOP counter has no formula for oneDNN's fused convolution and matmul ops (the ones mmcluster's layers
# call in CPU inference)
ONEDNN_FLOP_FORMULAS: dict[Any, Any] = {
    op: formula
    for op, formula in ((FUSED_CONV, _fused_conv_flop), (ONEDNN_LINEAR, _onednn_linear_flop))
    if op is not None
}

EXTRA_FLOP_FORMULAS: dict[Any, Any] = dict(ONEDNN_FLOP_FORMULAS)
if hasattr(aten, '_scaled_dot_product_flash_attention_for_cpu'):
    EXTRA_FLOP_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flop
CONVENTIONS = ('macs', 'torchprofile')


def flop_counter(display: bool = False, depth: int = 2, convention: str = 'macs') -> FlopCounterMode:
    """A FlopCounterMode that also counts the fused CPU attention kernel.

    ``convention='torchprofile'`` counts transposed convolutions as torchprofile does (see
    :func:`_torchprofile_conv_flop`), which is how the PaCa-ViT paper's starred FLOPs were measured.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f'convention must be one of {CONVENTIONS}, got {convention!r}')
    mapping = dict(EXTRA_FLOP_FORMULAS)
    if convention == 'torchprofile':
        mapping.update({aten.convolution: _torchprofile_conv_flop, aten._convolution: _torchprofile_conv_flop})
    return FlopCounterMode(display=display, depth=depth, custom_mapping=mapping)


@torch.no_grad()
def count_macs(model: torch.nn.Module, *inputs: Any, convention: str = 'macs', **kwargs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model(*inputs, **kwargs)``."""
    with flop_counter(convention=convention) as counter:
        model(*inputs, **kwargs)
    return counter.get_total_flops() // 2


def _dummy_input(height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))


def _measure(model: torch.nn.Module, forward: Callable[[torch.Tensor], Any], images: torch.Tensor) -> dict:
    """Params, MACs (both conventions) and the MACs of each top-level submodule of ``forward(images)`` (the
    elements of a top-level ModuleList / ModuleDict, e.g. a backbone's ``stages.0``, each on its own)."""
    with torch.no_grad(), flop_counter(depth=2) as counter, flop_counter(convention='torchprofile') as paper:
        forward(images)
    root = type(model).__name__
    containers = {name for name, child in model.named_children() if isinstance(child, (nn.ModuleList, nn.ModuleDict))}

    def top_level(name: str) -> bool:
        parts = name[len(root) + 1 :].split('.')
        return len(parts) == 1 or (len(parts) == 2 and parts[0] in containers)

    by_module = {
        name[len(root) + 1 :]: sum(ops.values()) // 2
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(root + '.') and top_level(name)
    }
    total = counter.get_total_flops() // 2
    if by_module and total > sum(by_module.values()):  # e.g. heads called through a method, not __call__
        by_module['(rest)'] = total - sum(by_module.values())
    return dict(
        params=sum(p.numel() for p in model.parameters()),
        macs=total,
        macs_torchprofile=paper.get_total_flops() // 2,
        macs_by_module=by_module,
    )


def config_complexity(cfg, height: int, width: int) -> dict:
    """Parameters and MACs of an mmdet/mmseg config's model on one (height, width) image, no dataset needed.

    Counts what mmdet's and mmseg's ``get_flops`` run: the model's ``tensor`` mode. For a two-stage
    detector that is backbone, neck, RPN, the box head on the test-time proposals and the mask head on
    the first 100 (:data:`MASK_ROIS`; a cascade's mask head of every stage too: mmdet's ``CascadeRoIHead``
    would run them on all 1000 proposals in ``tensor`` mode, where at test time they see at most 100
    detections); for a segmentor, backbone and decode head (no auxiliary head). Returns ``params``,
    ``macs``, ``macs_torchprofile`` (transposed convs counted as torchprofile does) and
    ``macs_by_module``.
    """
    from mmengine.registry import MODELS

    from ..apis import tensor_forward

    model_cfg = cfg.model.copy()
    if 'backbone' in model_cfg:
        model_cfg.backbone = dict(model_cfg.backbone, init_cfg=None)
    model = MODELS.build(model_cfg).eval()
    _limit_cascade_mask_rois(model)
    return _measure(model, tensor_forward(model, cfg.get('default_scope')), _dummy_input(height, width))


# the RoIs a mask head sees when counting: mmdet's StandardRoIHead takes the first 100 proposals in its tensor
# mode, and its test config keeps at most 100 detections, which are what the mask head runs on
MASK_ROIS = 100


def _limit_cascade_mask_rois(model: torch.nn.Module) -> None:
    """Make a cascade RoI head's mask heads (one per stage) run on the first :data:`MASK_ROIS` RoIs in
    ``tensor`` mode, as a standard RoI head's does (this instance only; the model is built for counting)."""
    try:
        from mmdet.models.roi_heads import CascadeRoIHead
    except ImportError:
        return
    head = getattr(model, 'roi_head', None)
    if isinstance(head, CascadeRoIHead) and head.with_mask:
        mask_forward = head._mask_forward

        def limited(stage: int, x: tuple, rois: torch.Tensor) -> dict:
            results = mask_forward(stage, x, rois[:MASK_ROIS])
            preds = results['mask_preds']  # zero rows for the other RoIs (no MACs), as the caller splits by RoI
            results['mask_preds'] = torch.cat([preds, preds.new_zeros((len(rois) - len(preds), *preds.shape[1:]))])
            return results

        head._mask_forward = limited


def module_complexity(model: torch.nn.Module, height: int, width: int) -> dict:
    """Parameters and MACs of ``model(images)`` (a backbone or classifier) on one (height, width) image."""
    model.eval()  # not chained: OpenMMLab's Swin returns None from train()
    return _measure(model, model, _dummy_input(height, width))


def timm_complexity(name: str, height: int, width: int, **kwargs: Any) -> dict:
    """Parameters and MACs of a timm-registered model on one (height, width) image."""
    import timm

    return module_complexity(timm.create_model(name, **kwargs), height, width)
