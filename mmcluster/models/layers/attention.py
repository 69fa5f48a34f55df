"""Multi-head attention of token-major queries over per-head keys and values, fused or head by head on CPUs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from . import row_bands

# Products per head (queries x keys x head width) from which fp32 CPU inference runs head by head on oneDNN's
# matmul instead of torch's fused kernel, and the scores computed at a time (16 MiB in fp32: PaCa-Small's stage 3
# at 1600x2560 took 0.89-0.96 of the time of 4 MiB chunks, 1.5-2.6x with 32-64 MiB, docs/benchmarks.md).
BY_HEAD_PRODUCTS = 2**23
SCORE_ELEMENTS = 2**22


def multi_head_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax(Q_h K_h^T / sqrt(d)) V_h`` for every head h, the heads' outputs side by side.

    Args:
        queries: (B, n, heads * d) tokens, as a linear layer gives them.
        keys, values: (B, heads, M, d).

    Returns:
        (B, n, heads * d) tokens, as an output projection takes them.

    This is torch's fused ``scaled_dot_product_attention``, except in fp32 CPU inference with at least
    :data:`BY_HEAD_PRODUCTS` multiply-adds per head in Q K^T: there each head is two matmuls on oneDNN (as
    PaCa-ViT's linear layers, :func:`~.row_bands.linear`) around a softmax over the scores in place, for a chunk
    of queries at a time. The fused CPU kernel runs its products on BLAS GEMMs of small blocks. On the Zen 5
    machine of ``docs/benchmarks.md``, where oneDNN's matmul runs at twice MKL's rate, single calls above the
    threshold at PaCa-Small's shapes took 0.70-0.83 of the fused kernel's time (the full attention of stage 3 over
    1000-4000 tokens: 0.78-0.83 with glibc's heap kept, 1.1-1.7x with default malloc in a fresh process; in the
    model, 0.88 with default malloc at 1600x2560), and below it 1.0-2.4x (224^2 maps). The same products and
    softmax; the scale multiplies the keys instead of the scores.
    """
    heads, head_dim = keys.shape[1], keys.shape[-1]
    if queries.shape[1] * keys.shape[2] * head_dim < BY_HEAD_PRODUCTS or not _runs_on_onednn(queries, keys, values):
        out = F.scaled_dot_product_attention(rearrange(queries, 'b n (h d) -> b h n d', h=heads), keys, values)
        return rearrange(out, 'b h n d -> b n (h d)')
    # oneDNN takes each head's keys (M, d) and values^T (d, M) as the weights of linear layers: contiguous, as a
    # strided weight (a head's columns of the stacked k/v output) is slower by orders of magnitude
    keys = torch.mul(keys, head_dim**-0.5, out=torch.empty(keys.shape, dtype=keys.dtype))
    values_t = values.transpose(-2, -1).contiguous()
    out = torch.empty(queries.shape, dtype=queries.dtype)
    chunk = max(1, SCORE_ELEMENTS // keys.shape[2])
    for sample in range(queries.shape[0]):
        for head in range(heads):
            columns = slice(head * head_dim, (head + 1) * head_dim)
            for start in range(0, queries.shape[1], chunk):
                rows = slice(start, start + chunk)
                scores = row_bands.linear(queries[sample, rows, columns], keys[sample, head])
                torch.softmax(scores, -1, out=scores)
                out[sample, rows, columns] = row_bands.linear(scores, values_t[sample, head])
    return out


def _runs_on_onednn(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    return row_bands.ONEDNN_LINEAR is not None and row_bands._cpu_fp32_inference(queries, keys, values)
