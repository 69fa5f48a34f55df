"""Multi-head attention of token-major queries over per-head keys and values, fused or head by head on CPUs."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from . import row_bands

# Products per head (queries x keys x head width) from which fp32 CPU inference runs head by head on oneDNN's
# matmul instead of torch's fused kernel, and the scores computed at a time (16 MiB in fp32: PaCa-Small's stage 3
# at 1600x2560 took 0.89-0.96 of its time with 4 MiB chunks; 32 and 64 MiB chunks took 1.5 and 2.6 times as long
# as 16 MiB ones with default malloc, docs/benchmarks.md).
BY_HEAD_PRODUCTS = 2**23
SCORE_ELEMENTS = 2**22
# Keys from which the softmax overwrites the scores. torch's CPU softmax over rows of fewer keys runs faster into
# another tensor: on the Zen 5 machine of docs/benchmarks.md 0.64x the in-place time on rows of 100 scores (0.53x
# at 49, 0.78x at 196), 1.02x at 400 and 1.07-1.12x on rows of 1000-4000.
IN_PLACE_SOFTMAX_KEYS = 400
# Whether head by head is the faster way on this machine at all: None decides it on first use, once per process and
# torch thread count (by_head_is_faster); True or False decides it. Which way is faster depends on the CPU more than
# on the shapes: on it, the two ways run their products on different GEMMs, oneDNN's matmul head by head and the
# BLAS GEMM (MKL's SGEMM in torch's x86 wheels) inside torch's fused kernel. On the AMD Zen 5 machines of
# docs/benchmarks.md (CPU family 26) oneDNN's ran at about twice MKL's rate; on the Zen 4 and Zen 3 ones, 2048^2
# products in separate runs, at 1.1-1.8 and 0.7-1.0 times.
BY_HEAD_FASTER: Optional[bool] = None
# The probe (row_bands.GemmProbe): one compute-bound product with a small output (256 x 256 from 4096-long rows, as
# the scores of 256 queries over 4096 keys: 0.5 GFLOP into 256 KiB), so that the allocator's state, which moved an
# earlier probe of whole attention calls by 2x (the per-call score tensors faulted in afresh, or not), does not weigh;
# and the margin, the BLAS time over oneDNN's, from which head by head is chosen. On the Zen 5 machine of
# docs/benchmarks.md the ratio was 2.0-2.2 and head by head took 0.91-0.96 of the fused kernel's time in the whole
# PaCa-Small at 800x1280 (1.01-1.03 at 224^2, 1.02 at 1600x2560); on the Zen 4 one the whole model took 0.97-1.03 as
# long either way, so a ratio near the threshold there costs little either way.
BY_HEAD_PROBE_SHAPE = (256, 256, 4096)  # rows, output columns, row length
BY_HEAD_GEMM_RATIO = 1.6
BY_HEAD_PROBE = row_bands.GemmProbe(BY_HEAD_PROBE_SHAPE, BY_HEAD_GEMM_RATIO)


def multi_head_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax(Q_h K_h^T / sqrt(d)) V_h`` for every head h, the heads' outputs side by side.

    Args:
        queries: (B, n, heads * d) tokens, as a linear layer gives them.
        keys, values: (B, heads, M, d).

    Returns:
        (B, n, heads * d) tokens, as an output projection takes them.

    This is torch's fused ``scaled_dot_product_attention``, except in fp32 CPU inference with at least
    :data:`BY_HEAD_PRODUCTS` multiply-adds per head in Q K^T on a machine where that is faster
    (:func:`by_head_is_faster`): there each head is two matmuls on oneDNN
    (:func:`~.row_bands.onednn_linear`) around a softmax, for a chunk of queries at a time;
    the softmax is written over the scores, or into a buffer of its own for rows of fewer than
    :data:`IN_PLACE_SOFTMAX_KEYS` keys. The fused CPU kernel runs its products on BLAS GEMMs of small blocks. On
    the Zen 5 machine of ``docs/benchmarks.md``, where oneDNN's matmul runs at twice MKL's rate, PaCa-ViT's calls
    above the threshold (the cluster attention of stages 0-2 at 800x1280 and of stage 0 at 224^2, stage 3's full
    attention over 1000 and 4000 tokens) took 0.77-0.87 of the fused kernel's time one by one with glibc's heap
    kept, and 0.76-1.5x with default malloc, whose state changes from round to round (in the model there, stage 3
    at 1600x2560 with 4 MiB chunks: 0.88); calls below it 1.0-2.4x (196-784 queries). On a Zen 4 machine the
    same calls took 1.1-2.0x the fused kernel's time one by one with default malloc, and the whole PaCa-Small
    0.97-1.03 as long either way; there :func:`by_head_is_faster` keeps the fused kernel. The same products and
    softmax; the scale multiplies the keys instead of the scores.
    """
    if not _by_head(queries, keys, values):
        return _fused(queries, keys, values)
    return _attention_by_head(queries, keys, values)


def _fused(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """:func:`multi_head_attention` on torch's fused kernel."""
    out = F.scaled_dot_product_attention(rearrange(queries, 'b n (h d) -> b h n d', h=keys.shape[1]), keys, values)
    return rearrange(out, 'b h n d -> b n (h d)')


def _attention_by_head(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """:func:`multi_head_attention` head by head on oneDNN's matmul, a chunk of queries at a time."""
    heads, head_dim = keys.shape[1], keys.shape[-1]
    # Each head's keys (M, d) and values^T (d, M) are the weights of linear layers, made contiguous: onednn_linear()
    # runs a strided weight (a head's columns of the stacked k/v output) as F.linear, and oneDNN's matmul on one took
    # 274 instead of 0.2 ms.
    keys = torch.mul(keys, head_dim**-0.5, out=keys.new_empty(keys.shape))
    values_t = values.transpose(-2, -1).contiguous()
    out = queries.new_empty(queries.shape)
    num_keys = keys.shape[2]
    chunk = max(1, SCORE_ELEMENTS // num_keys)
    weights = None if num_keys >= IN_PLACE_SOFTMAX_KEYS else queries.new_empty(min(chunk, queries.shape[1]), num_keys)
    for sample in range(queries.shape[0]):
        for head in range(heads):
            columns = slice(head * head_dim, (head + 1) * head_dim)
            for start in range(0, queries.shape[1], chunk):
                rows = slice(start, start + chunk)
                scores = row_bands.onednn_linear(queries[sample, rows, columns], keys[sample, head])
                probabilities = scores if weights is None else weights[: scores.shape[0]]
                torch.softmax(scores, -1, out=probabilities)
                out[sample, rows, columns] = row_bands.onednn_linear(probabilities, values_t[sample, head])
    return out


def _by_head(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether :func:`multi_head_attention` runs head by head: fp32 CPU inference on oneDNN, at least
    :data:`BY_HEAD_PRODUCTS` products per head, and the shapes of the docstring (no broadcast batch, values as wide
    as the keys); else the fused kernel, which also checks the shapes."""
    batch, heads, num_keys, head_dim = keys.shape
    return (
        queries.dim() == 3
        and queries.shape[0] == batch
        and queries.shape[2] == heads * head_dim
        and values.shape == keys.shape
        and queries.shape[1] * num_keys * head_dim >= BY_HEAD_PRODUCTS
        and row_bands.ONEDNN_LINEAR is not None
        and row_bands.cpu_fp32_inference(queries, keys, values)
        and by_head_is_faster()
    )


def by_head_is_faster() -> bool:
    """Whether attention head by head on oneDNN's matmul is the faster way on this machine, at torch's current thread
    count: :data:`BY_HEAD_FASTER` if set, else :data:`BY_HEAD_PROBE`'s answer, measured once per process and thread
    count (50-150 ms on 2 threads). Head by head runs its products on oneDNN's matmul, torch's fused kernel on the
    BLAS GEMM (as ``torch.mm``); head by head is chosen if oneDNN's is faster by :data:`BY_HEAD_GEMM_RATIO`, else the
    fused kernel. Either way gives the same values within fp32 rounding; only the time differs. Without oneDNN's op,
    or under a torch dispatch mode (a FLOP counter, FakeTensorMode, make_fx), it answers False without measuring:
    what is counted or traced is always the fused kernel."""
    return BY_HEAD_PROBE.onednn_faster() if BY_HEAD_FASTER is None else BY_HEAD_FASTER
