"""Operation counting with ``torch.utils.flop_counter.FlopCounterMode``.

Convention (the paper's, and what spec §2.11 measures): count multiply-accumulates (MACs) of
convolutions and matrix products, attention's two products (QK^T and AV) and the clustering product
C^T X included; element-wise ops, norms and softmax are not counted. FlopCounterMode counts 2 FLOPs per
MAC, so MACs = FLOPs / 2.

mmengine's counter has no handler for ``scaled_dot_product_attention``. FlopCounterMode has, for the
CUDA kernels, but not for the fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``); it is
registered here with torch's own SDPA formula.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FLOP_FORMULAS: dict[Any, Any] = {}
if hasattr(aten, '_scaled_dot_product_flash_attention_for_cpu'):
    EXTRA_FLOP_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flop


def flop_counter(display: bool = False, depth: int = 2) -> FlopCounterMode:
    """A FlopCounterMode that also counts the fused CPU attention kernel."""
    return FlopCounterMode(display=display, depth=depth, custom_mapping=EXTRA_FLOP_FORMULAS)


@torch.no_grad()
def count_macs(model: torch.nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model(*inputs, **kwargs)``."""
    with flop_counter() as counter:
        model(*inputs, **kwargs)
    return counter.get_total_flops() // 2
