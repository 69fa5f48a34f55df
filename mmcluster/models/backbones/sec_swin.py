"""SEC-Swin (Fan et al., "Semantic Equitable Clustering", arXiv 2405.13337, Sec. 4.1 "Strict comparison
with baselines", Table 2 and Appendix A / Table 8): OpenMMLab's Swin Transformer with its window attention
(W-MSA and SW-MSA) replaced by SECA, "without introducing any other modules (such as CPE, Conv Stem, etc.)".

Everything else is the upstream backbone, inherited and not copied: patch embedding, patch merging, the
MLPs, drop path, the output norms and mmdet's meanings of ``out_indices``, ``frozen_stages`` (0: the patch
embedding; k: it and the first k stages) and ``with_cp``. Each block's ``attn`` becomes
:class:`SwinSECAttention`, which takes the same call, the (B, N, C) tokens and the (H, W) grid.

What the paper leaves open (spec §3.4 (a), §7.4), and how it is decided here:

* Clustering replaces the windows (over the whole stage's tokens), as in SecViT, rather than running
  inside each window: Table 2's FLOPs (4.9 G against Swin-T's 4.5 G) match clusters of 98 tokens at 224²
  (32 / 8 / 2 clusters over 3136 / 784 / 196 tokens, full attention over 49 in stage 4), against windows of
  49. The same clusters per stage as every SEC model of the paper (Appendix A): (32, 8, 2, full).
* SECA is SecViT's, 2-D RoPE and LCE included (:class:`~mmcluster.models.layers.SECAttention`); with the
  windows gone, Swin's relative position bias goes too, and RoPE (parameter-free) carries the positions.
  There is no shifting: a shift only moves window borders, and clusters have none.
* Parameter counts with Swin's 1000-class classifier (final LayerNorm + Linear, as Table 2 counts them):
  SEC-Swin-T 28,379,848 and SEC-Swin-S 49,793,224 (Swin-T 28,288,354, Swin-S 49,606,258); the paper
  rounds to 29M and 50M.

No SEC-Swin code or checkpoint was released; there is no converter. A checkpoint of this layout (e.g. from
your own ImageNet training) loads through ``init_cfg=dict(type='Pretrained', checkpoint=...)`` with the
strict, safe loader of :mod:`mmcluster.utils.checkpoint`.

The concrete backbones are in :mod:`mmcluster.models.register_mmdet` (on mmdet's ``SwinTransformer``) and
:mod:`mmcluster.models.register_mmseg` (on mmseg's); both are called ``SECSwinTransformer`` in their
package's MODELS registry. This module needs torch, timm and einops only.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import trunc_normal_

from ..layers import RoPE2d, SECAttention
from .secvit import cluster_settings

SEC_SWIN_ARCHS = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
}
# the arguments of OpenMMLab's SwinTransformer that only its window attention uses
WINDOW_ATTENTION_ARGS = ('window_size', 'qkv_bias', 'qk_scale', 'attn_drop_rate')


class SwinSECAttention(SECAttention):
    """SECA in a Swin block, in place of ``ShiftWindowMSA``: the same call, ``(query, hw_shape)`` with
    ``query`` (B, H * W, C) row-major tokens, and a (B, H * W, C) result. The RoPE tables of the grid come
    from ``rope`` (the fixed frequency buffer ``rope.angle``, as in SecViT's stages)."""

    def __init__(self, dim: int, num_heads: int, num_clusters: int = 0, tokens_per_cluster: int = 0) -> None:
        super().__init__(dim, num_heads, num_clusters, tokens_per_cluster)
        self.rope = RoPE2d(dim // num_heads)

    def forward(self, query: torch.Tensor, hw_shape: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        height, width = hw_shape
        x = rearrange(query, 'b (y x) c -> b c y x', y=height, x=width)
        out = super().forward(x, self.rope(height, width))
        return rearrange(out, 'b c y x -> b (y x) c')


class SECSwinMixin:
    """Mixed in before an OpenMMLab ``SwinTransformer`` (mmdet's or mmseg's): builds it, then puts a
    :class:`SwinSECAttention` in every block.

    Args:
        arch: ``'tiny'`` or ``'small'`` (:data:`SEC_SWIN_ARCHS`, Table 8), or None to give ``embed_dims``,
            ``depths`` and ``num_heads`` as for Swin (head dimensions divisible by 4, for RoPE).
        num_clusters: clusters per stage (<= 1: full attention); default (32, 8, 2, 0), the paper's.
        tokens_per_cluster: instead, tokens per cluster (int, or one per stage): a stage's count follows
            its input, ceil(N / size), which keeps the cost linear in N (see docs/secvit.md).
        **kwargs: the Swin backbone's other arguments (``out_indices``, ``frozen_stages``, ``with_cp``,
            ``drop_path_rate``, ``init_cfg``, ...). Those of the window attention (``window_size``,
            ``qkv_bias``, ``qk_scale``, ``attn_drop_rate``) raise TypeError: SECA has none of them.
    """

    def __init__(
        self,
        arch: Optional[str] = 'tiny',
        num_clusters: Optional[Sequence[int]] = None,
        tokens_per_cluster: Union[int, Sequence[int], None] = None,
        **kwargs,
    ) -> None:
        name = type(self).__name__
        for key in WINDOW_ATTENTION_ARGS:
            if key in kwargs:
                raise TypeError(f'{name} has no window attention, so no argument {key!r}: SECA replaces it')
        if arch is not None:
            if arch not in SEC_SWIN_ARCHS:
                raise ValueError(f'{name}: arch must be one of {sorted(SEC_SWIN_ARCHS)} or None, got {arch!r}')
            given = sorted(set(SEC_SWIN_ARCHS[arch]) & set(kwargs))
            if given:
                raise ValueError(f'{name}: arch={arch!r} sets {given}; give arch=None to set them yourself')
            kwargs.update(SEC_SWIN_ARCHS[arch])
        super().__init__(**kwargs)
        self.arch = arch
        self.num_clusters, self.tokens_per_cluster = cluster_settings(
            num_clusters, tokens_per_cluster, len(self.stages)
        )
        for stage, clusters, size in zip(self.stages, self.num_clusters, self.tokens_per_cluster):
            for block in stage.blocks:
                dim = block.norm1.normalized_shape[0]
                heads = block.attn.w_msa.num_heads
                if (dim // heads) % 4:
                    raise ValueError(f'{name}: head dimension {dim} / {heads} must be divisible by 4 (2-D RoPE)')
                block.attn = SwinSECAttention(dim, heads, clusters, size)

    def train(self, mode: bool = True):
        """The upstream ``train`` (which re-applies ``frozen_stages``), returning the module as torch's does
        (OpenMMLab's Swin returns None, so ``model.eval()`` could not be chained)."""
        super().train(mode)
        return self

    def init_weights(self) -> None:
        """From scratch: the upstream Swin initialisation (Linear trunc-normal 0.02, LayerNorm 1 / 0), and
        SECA's convs trunc-normal 0.02 with zero bias (as SecViT, spec §2.9). With ``init_cfg``
        ``Pretrained``: that, then the checkpoint through mmcluster's safe, strict loader, which names what
        does not match (a ``backbone.`` prefix is stripped; ``init_cfg.prefix`` picks another)."""
        init_cfg, self.init_cfg = self.init_cfg, None
        try:
            super().init_weights()
        finally:
            self.init_cfg = init_cfg
        for module in self.modules():
            if isinstance(module, SwinSECAttention):
                for conv in (module.qkv, module.lepe, module.out_proj):
                    trunc_normal_(conv.weight, std=0.02)
                    nn.init.zeros_(conv.bias)
        if init_cfg is not None:
            from mmengine.logging import MMLogger

            from mmcluster.utils.checkpoint import load_pretrained

            if init_cfg.get('type') != 'Pretrained' or 'checkpoint' not in init_cfg:
                raise ValueError(
                    f'{type(self).__name__}: init_cfg must be Pretrained with a checkpoint, got {init_cfg}'
                )
            load_pretrained(
                self,
                init_cfg['checkpoint'],
                prefix=init_cfg.get('prefix'),
                ignore_unexpected=('head.', 'norm.'),
                logger=MMLogger.get_current_instance(),
            )
        self._is_init = True
