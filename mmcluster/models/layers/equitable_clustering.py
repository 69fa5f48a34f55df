"""Semantic Equitable Clustering (SEC; Fan et al., "Semantic Equitable Clustering", arXiv 2405.13337,
Sec. 3.2, Eqns. 2-5): one-pass clustering of tokens into groups of equal size, and attention inside each
group. Shared by every attention layer that clusters this way (SecViT's SECA; SEC in other backbones).

1. Scores (Eqn. 3): the cosine similarity of every key to the centre ``mean(K)`` (Eqn. 2), per batch
   element and head, computed in fp32 also under autocast (:class:`SemanticScores`).
2. Order: ``argsort`` of the scores along the token axis (ascending, as the official code; descending gives
   the same groups, only numbered in reverse).
3. Groups (Eqn. 4): contiguous chunks of the sorted order; standard softmax attention inside each chunk
   (Eqn. 5), then the outputs go back to the original token order.

The official code asserts that the number of tokens N is divisible by the number of clusters c. Here any N
works: with s = ceil(N / c) slots per cluster, the sorted sequence is laid out on c * s slots so that the
first c - P clusters hold s tokens and the last P = c * s - N hold s - 1 tokens and one padding slot (the
sizes differ by at most one, and no cluster is all padding: :func:`resolve_num_clusters` never asks for more
clusters than tokens). Padding keys are masked out of the softmax (``-inf``) and padding queries are
dropped. When c divides N no padding exists, the masked path is not taken, and the computation is the
official one. Everything runs batched over batch elements and heads (row selection with the sort indices),
the attention through torch's fused ``scaled_dot_product_attention``. Needs torch only.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class SemanticScores(nn.Module):
    """Cosine similarity of each key to the mean key (Eqns. 2-3), (B, h, N, d) -> (B, h, N), always fp32.

    The centre is the mean over the N tokens of the keys as given (for SecViT: rotated by RoPE and scaled),
    then L2-normalised; the dot product of each key with it is divided by the key's norm. The signed
    similarity is returned. The computation runs outside autocast on fp32 copies, so the order of near-equal
    scores is not decided by fp16 rounding; the output is fp32 (``fp32_output``, checked by
    ``tools/analysis_tools/check_amp.py``).
    """

    fp32_output = True

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=keys.device.type, enabled=False):
            keys = keys.float()
            centre = F.normalize(keys.mean(dim=-2), dim=-1)  # (B, h, d)
            dots = torch.matmul(keys, centre.unsqueeze(-1)).squeeze(-1)  # (B, h, N)
            return dots / torch.linalg.vector_norm(keys, dim=-1).clamp_min(1e-12)


def resolve_num_clusters(num_tokens: int, num_clusters: int = 0, tokens_per_cluster: int = 0) -> int:
    """The number of clusters for ``num_tokens`` tokens: ``ceil(N / tokens_per_cluster)`` when that is set,
    else ``num_clusters``; never more than N. A result <= 1 means plain attention over all tokens."""
    if tokens_per_cluster > 0:
        count = math.ceil(num_tokens / tokens_per_cluster)
    else:
        count = num_clusters
    return min(count, num_tokens)


class EquitableLayout(NamedTuple):
    """How N sorted tokens sit on c clusters of s = ceil(N / c) slots. The tensors are cached and shared:
    do not modify them.

    Attributes:
        source: (c * s,) the sorted rank of the token in each slot (padding slots repeat rank 0, whose key
            is masked out and whose query is dropped), or None when c divides N (slot == rank).
        valid: (c, s) bool, the slots that hold a token (None without padding).
        valid_slots: (N,) the slot of each sorted rank (None without padding).
        rank_to_cluster: (N,) the cluster of the token of each sorted rank.
    """

    num_tokens: int
    num_clusters: int
    size: int
    source: Optional[torch.Tensor]
    valid: Optional[torch.Tensor]
    valid_slots: Optional[torch.Tensor]
    rank_to_cluster: torch.Tensor


@functools.lru_cache(maxsize=256)
def _layout(num_tokens: int, num_clusters: int, device: torch.device, force_padding: bool) -> EquitableLayout:
    size = -(-num_tokens // num_clusters)
    padding = num_clusters * size - num_tokens
    full = num_clusters - padding  # clusters with `size` tokens; the rest have size - 1
    ranks = torch.arange(num_tokens, device=device)
    split = full * size
    rank_to_cluster = torch.where(ranks < split, ranks // size, full + (ranks - split) // max(size - 1, 1))
    if padding == 0 and not force_padding:
        return EquitableLayout(num_tokens, num_clusters, size, None, None, None, rank_to_cluster)
    slots = torch.arange(num_clusters * size, device=device)
    cluster, position = slots // size, slots % size
    start = torch.where(cluster < full, cluster * size, split + (cluster - full) * (size - 1))
    length = torch.where(cluster < full, size, size - 1)
    valid = position < length
    source = torch.where(valid, start + position, torch.zeros_like(slots))
    # the slot of each sorted rank (``slots[valid]``, whose size torch.compile could not know): the rank plus the
    # padding slots before it, one at the end of each cluster after the first `full`
    valid_slots = ranks + (ranks - split).clamp_min(0) // max(size - 1, 1)
    return EquitableLayout(
        num_tokens, num_clusters, size, source, valid.view(num_clusters, size), valid_slots, rank_to_cluster
    )


def equitable_layout(
    num_tokens: int, num_clusters: int, device: Optional[torch.device] = None, force_padding: bool = False
) -> EquitableLayout:
    """The balanced layout of ``num_tokens`` sorted tokens on ``num_clusters`` clusters (module docstring).

    ``force_padding`` builds the slot map even when c divides N (it is then the identity with no padding
    slot), so that the masked code path can be compared with the plain one.
    """
    if not 1 <= num_clusters <= num_tokens:
        raise ValueError(f'need 1 <= num_clusters <= num_tokens, got {num_clusters} clusters for {num_tokens} tokens')
    # Compiled, the layout is traced into the graph (its tensors depend only on the ints, so they are
    # constants there); the cache holds eager tensors only.
    layout = _layout.__wrapped__ if torch.compiler.is_compiling() else _layout
    return layout(int(num_tokens), int(num_clusters), torch.device(device or 'cpu'), bool(force_padding))


def equitable_cluster_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: torch.Tensor,
    num_clusters: int,
    scale: Optional[float] = None,
    force_padding: bool = False,
) -> torch.Tensor:
    """Softmax attention inside each cluster of the sorted order, back in the original token order.

    Args:
        q, k, v: (B, h, N, d).
        order: (B, h, N) integer sort indices (``argsort`` of :class:`SemanticScores`), a permutation of
            0..N-1 per batch element and head.
        num_clusters: c, 1 <= c <= N.
        scale: the softmax scale (``scaled_dot_product_attention``'s; None is d ** -0.5).
        force_padding: take the masked (padding) path even when c divides N.

    Returns:
        (B, h, N, d), a view of a token-major (B, N, h, d) tensor.
    """
    batch, heads, num_tokens, dim = q.shape
    layout = equitable_layout(num_tokens, num_clusters, q.device, force_padding)
    c, s = layout.num_clusters, layout.size
    slot_tokens = order if layout.source is None else order.index_select(-1, layout.source)  # (B, h, c * s)
    q, k, v = (_take_rows(t, slot_tokens).view(batch, heads * c, s, dim) for t in (q, k, v))
    if layout.source is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        mask = layout.valid[None, :, None, :].expand(heads, c, 1, s).reshape(1, heads * c, 1, s)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # Back to the original order: token t of head j reads the slot that holds it (padding slots are dropped),
    # written token-major.
    ranks = torch.arange(num_tokens, device=order.device).expand_as(order)
    slot_of_token = torch.empty_like(order).scatter_(-1, order, ranks)
    if layout.valid_slots is not None:
        slot_of_token = layout.valid_slots[slot_of_token]
    offsets = torch.arange(batch * heads, device=order.device).view(batch, heads, 1) * (c * s)
    rows = (slot_of_token + offsets).transpose(1, 2).reshape(-1)  # (B, N, h) order
    return out.reshape(-1, dim).index_select(0, rows).view(batch, num_tokens, heads, dim).transpose(1, 2)


def _take_rows(t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``t[b, j, tokens[b, j, m]]`` for t (B, h, N, d) and tokens (B, h, M): (B, h, M, d), contiguous.

    Rows of d values are copied with ``index_select`` on a 2-D view (several times faster on CPU than a
    ``gather`` with an index per element); ``t`` may be head-major or token-major in memory."""
    batch, heads, num_tokens, dim = t.shape
    if t.is_contiguous():  # rows in (b, j, n) order
        flat = tokens + torch.arange(batch * heads, device=t.device).view(batch, heads, 1) * num_tokens
        return t.reshape(-1, dim).index_select(0, flat.reshape(-1)).view(batch, heads, -1, dim)
    token_major = t.transpose(1, 2)
    if not token_major.is_contiguous():
        return _take_rows(t.contiguous(), tokens)
    # rows in (b, n, j) order
    flat = (tokens + torch.arange(batch, device=t.device).view(batch, 1, 1) * num_tokens) * heads
    flat = flat + torch.arange(heads, device=t.device).view(1, heads, 1)
    return token_major.reshape(-1, dim).index_select(0, flat.reshape(-1)).view(batch, heads, -1, dim)


def cluster_ids(order: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """The cluster of every token, (B, h, N) long, for sort indices ``order`` (B, h, N)."""
    layout = equitable_layout(order.shape[-1], num_clusters, order.device)
    ranks = layout.rank_to_cluster.expand_as(order)
    return torch.empty_like(order).scatter(-1, order, ranks)
