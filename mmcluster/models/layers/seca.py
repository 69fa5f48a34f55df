"""SECA, Semantic-Equitable-Clustering attention (Fan et al., arXiv 2405.13337, Sec. 3.2, Eqns. 2-6), on
a (B, C, H, W) map with 2-D RoPE: the token mixer of SecViT (:mod:`mmcluster.models.backbones.secvit`) and of
SEC-Swin (:mod:`mmcluster.models.backbones.sec_swin`). Official counterpart: ``KClusterAttn`` in
github.com/qhfan/SecViT ``classfication_release/SecViT.py``. Needs torch and einops only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .equitable_clustering import SemanticScores, equitable_cluster_attention, resolve_num_clusters
from .rope import apply_rope

LCE_KERNEL_SIZE = 5  # the LCE's depth-wise kernel (Appendix A: "5x5 depth-wise convolutions ... for LCE")


class SECAttention(nn.Module):
    """Semantic-Equitable-Clustering attention, SECA (Sec. 3.2, Eqns. 2-6; official `KClusterAttn`).

    On the normalised map x (B, C, H, W) with h heads of d = C / h channels:

    1. q, k, v from one 1x1 conv (``qkv``; output channels [q | k | v], head-major inside each);
    2. LCE (Eqn. 6): a 5x5 depth-wise conv (``lepe``) on the v map;
    3. 2-D RoPE on q and k (the stage's tables), then k scaled by d ** -0.5 (the softmax scale, folded in
       before clustering);
    4. with c > 1 clusters: the cosine similarity of each key to the mean key (``scores``, fp32), argsort,
       attention inside equal contiguous chunks of the sorted order (padded and masked where c does not
       divide N); with c <= 1, attention over all tokens;
    5. the output plus LCE(v), through the 1x1 conv ``out_proj``.

    Args:
        dim: channels C.
        num_heads: heads h (must divide C; C / h divisible by 4 for RoPE).
        num_clusters: clusters c (<= 1: full attention); used when ``tokens_per_cluster`` is 0.
        tokens_per_cluster: > 0 makes c = ceil(N / tokens_per_cluster) for each input.

    ``always_pad`` (attribute, default False) takes the masked padding path also when c divides N.
    """

    def __init__(self, dim: int, num_heads: int, num_clusters: int = 0, tokens_per_cluster: int = 0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads ({num_heads}) must divide the channels ({dim})')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.num_clusters = num_clusters
        self.tokens_per_cluster = tokens_per_cluster
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.lepe = nn.Conv2d(dim, dim, LCE_KERNEL_SIZE, padding=LCE_KERNEL_SIZE // 2, groups=dim)
        self.out_proj = nn.Conv2d(dim, dim, 1)
        clusters = tokens_per_cluster > 0 or num_clusters > 1
        self.scores = SemanticScores() if clusters else None
        self.always_pad = False

    def num_clusters_for(self, num_tokens: int) -> int:
        """The cluster count used for ``num_tokens`` tokens (<= 1: full attention)."""
        if self.scores is None:
            return 1
        return resolve_num_clusters(num_tokens, self.num_clusters, self.tokens_per_cluster)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = self.qkv(x).chunk(3, dim=1)
        lce = self.lepe(v)
        q, k, v = (rearrange(t, 'b (h d) y x -> b h (y x) d', h=self.num_heads) for t in (q, k, v))
        sin, cos = rope
        q = apply_rope(q, sin, cos)
        k = apply_rope(k, sin * self.scale, cos * self.scale)  # RoPE, then the softmax scale d ** -0.5
        clusters = self.num_clusters_for(height * width)
        if clusters > 1:
            order = torch.argsort(self.scores(k), dim=-1)
            out = equitable_cluster_attention(
                q.to(v.dtype), k.to(v.dtype), v, order, clusters, scale=1.0, force_padding=self.always_pad
            )
        else:
            out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, scale=1.0)
        # to (B, C, H, W) with token-major (channels-last) memory: the layout of the convs' outputs here (lce), and
        # of the clustered attention's output
        out = rearrange(out, 'b h (y x) d -> b y x (h d)', y=height, x=width).permute(0, 3, 1, 2)
        return self.out_proj(out + lce)

    def extra_repr(self) -> str:
        mode = (
            f'tokens_per_cluster={self.tokens_per_cluster}'
            if self.tokens_per_cluster > 0
            else f'num_clusters={self.num_clusters}'
        )
        return f'num_heads={self.num_heads}, {mode}'
