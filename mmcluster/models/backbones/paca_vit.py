"""PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers (Grainger et al., CVPR 2023).

Equation, section and figure numbers refer to the paper. The architecture follows the official
implementation (github.com/iVMCL/PaCaViT, ``models/paca_vit.py``) exactly: parameter counts, layer order
and initialisation. Official checkpoints are mapped onto this module layout by the ``paca_vit`` converter
registered at the end of this file.

This file needs torch, timm and einops only: the timm classifiers work without the OpenMMLab stack, and
the mmdet / mmseg backbone is the same network with :class:`~.base.BackboneContract` mixed in.

Module layout::

    PaCaViTClassifier / PaCaViT
    ├── patch_embed        ConvDownsample: two stride-2 3x3 convs + LayerNorm2d (stride 4)
    ├── teacher            ConvMixerClusteringTeacher (only for the external-clustering variants, Fig. 4)
    ├── stages[i]          PaCaStage
    │   ├── downsample     ConvDownsample (stages 1-3; Identity in stage 0)
    │   ├── blocks[j]      PaCaBlock: x + PaCa(LN(x)), x + FFN(LN(x))
    │   │   └── attn       PatchToClusterAttention, with its own `clustering` module when the block
    │   │                  computes the assignment (stage-wise: block 0 only; block-wise: every block)
    │   └── norm           LayerNorm at the end of the stage (its output is the stage's feature map)
    └── head               Linear classifier on the mean-pooled last map (Identity in the backbone)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Literal, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..conversion import FamilyConverter, RuleTable, register_converter
from ..layers import (
    BlurConv2d,
    ConvDownsample,
    DWConvFFN,
    OneDNNLinear,
    SoftAssignment,
    band_height,
    conv_rows,
    forward_hooks_within,
    has_forward_hooks,
    linear,
    linear_tokens_last,
    map_row_bands,
    multi_head_attention,
    pool_clusters,
)
from .base import (
    BackboneContract,
    HierarchicalViT,
    check_int,
    check_per_stage,
    check_positive,
    check_rate,
    create_timm_model,
)

Clustering = Literal['conv', 'mlp', 'teacher']
Assignment = Literal['stage', 'block']

# The official variants (`_arch_settings` in models/paca_vit.py). Teacher variants use the external
# ConvMixer-FPN clustering teacher; their ViT depths are reduced so that the total stays close to the
# onsite models.
PACA_ARCHS: dict[str, dict] = {
    'tiny': dict(embed_dims=(96, 192, 320, 384), depths=(2, 2, 4, 2), num_heads=(2, 4, 8, 16)),
    'small': dict(embed_dims=(96, 192, 320, 384), depths=(3, 3, 10, 3), num_heads=(2, 4, 8, 16)),
    'base': dict(embed_dims=(96, 192, 384, 512), depths=(3, 3, 18, 3), num_heads=(2, 4, 8, 16)),
    'tiny_teacher': dict(
        embed_dims=(96, 192, 320, 384), depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), teacher_depths=(2, 2, 2, 2)
    ),
    'small_teacher': dict(
        embed_dims=(96, 192, 320, 384), depths=(3, 3, 7, 3), num_heads=(2, 4, 8, 16), teacher_depths=(2, 2, 2, 2)
    ),
    'base_teacher': dict(
        embed_dims=(96, 192, 384, 512), depths=(3, 3, 16, 3), num_heads=(2, 4, 8, 16), teacher_depths=(2, 2, 4, 2)
    ),
}
ONSITE_CLUSTERS = (100, 100, 100, 0)  # clusters per stage; 0 = full self-attention
TEACHER_CLUSTERS = (100, 100, 100, 100)
CLUSTERING_KERNEL_SIZE = 7


# ---------------------------------------------------------------------------------------------------
# Onsite clustering modules (Sec. 3.2.1). Each maps normalised tokens (B, N, C) on an H x W grid to
# assignment logits (B, M, N); the softmax over N (Eqns. 5, 6) is taken by PatchToClusterAttention. Given the
# block's LayerNorm as ``norm``, they take the block's input tokens instead and normalise them band by band.
# The output layer is named `to_clusters` in every clustering type, so one optimizer rule (and one
# re-initialisation rule when a downstream task changes M) covers all of them.


class ConvClustering(nn.Module):
    """Clustering via convolution, Eqns. 4-5: DWConv7x7 + GELU, PWConv + GELU, PWConv C -> M."""

    def __init__(self, dim: int, num_clusters: int, kernel_size: int = CLUSTERING_KERNEL_SIZE) -> None:
        super().__init__()
        self.spatial_mix = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.channel_mix = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.to_clusters = nn.Conv2d(dim, num_clusters, 1, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], norm: Optional[nn.Module] = None) -> torch.Tensor:
        # local (7x7 receptive field): band by band on CPUs, only the logits allocated at full size
        halo = self.spatial_mix.kernel_size[0] // 2
        band_logits = lambda _, context, band, rows: self.token_logits(context, band, rows)  # noqa: E731
        normalise = None if norm is None else lambda tokens, *_: (tokens, norm(tokens))  # noqa: E731 (once per row)
        return map_row_bands(band_logits, x, hw, x.shape[-1], halo, normalise, tokens_last=True)  # (B, M, N)

    def token_logits(self, x: torch.Tensor, hw: tuple[int, int], rows: slice) -> torch.Tensor:
        """Logits (B, M, n) of the n tokens in ``rows`` of x (B, N, C), tokens of an H x W map (the rows
        around them are the depth-wise conv's context)."""
        spatial = rearrange(x, 'b (h w) c -> b c h w', h=hw[0], w=hw[1])  # a channels-last view
        x = rearrange(conv_rows(self.spatial_mix, spatial, rows, act=self.act), 'b c h w -> b (h w) c')
        # the 1x1 convs as the GEMMs on tokens that they are (same weights), the logits tokens last
        x = linear(x, self.channel_mix.weight.flatten(1), self.channel_mix.bias, self.act)
        return linear_tokens_last(x, self.to_clusters.weight.flatten(1))


class MlpClustering(nn.Module):
    """Clustering via MLP, Eqn. 6: Linear C -> 4C + GELU, Linear 4C -> M."""

    def __init__(self, dim: int, num_clusters: int, hidden_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.fc = OneDNNLinear(dim, hidden)
        self.act = nn.GELU()
        self.to_clusters = OneDNNLinear(hidden, num_clusters)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], norm: Optional[nn.Module] = None) -> torch.Tensor:
        # token-wise: band by band on CPUs, the 4C hidden tokens in the cache
        hidden = self.fc.out_features
        normalised = lambda tokens: tokens if norm is None else norm(tokens)  # noqa: E731
        band_logits = lambda tokens, *_: linear_tokens_last(  # noqa: E731
            linear(normalised(tokens), self.fc.weight, self.fc.bias, self.act),
            self.to_clusters.weight,
            self.to_clusters.bias,
        )
        return map_row_bands(band_logits, x, hw, hidden, tokens_last=True)  # (B, M, N)


# ---------------------------------------------------------------------------------------------------


def fused_linear(x: torch.Tensor, layers: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
    """``tuple(layer(x) for layer in layers)`` in one GEMM, with the layers' weights stacked on the fly (the
    state dict keeps one weight per layer, as the official checkpoints have them)."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


class PatchToClusterAttention(nn.Module):
    """Patch-to-cluster attention, Eqns. 1-2.

    Queries come from the N patch tokens X; keys and values from M cluster tokens
    Z = LayerNorm(C^T X) (Eqn. 2), where C^T (B, M, N) is the soft assignment. With ``num_clusters=0``
    this is ordinary multi-head self-attention over all N tokens. Attention runs through torch's fused
    ``scaled_dot_product_attention`` (scale head_dim ** -0.5), on CPUs in inference head by head on oneDNN's
    matmul where that is faster (:func:`~mmcluster.models.layers.multi_head_attention`). The assignment and the
    pooling ``C^T X`` run in fp32 also under autocast (see :func:`~mmcluster.models.layers.pool_clusters`).

    Args:
        dim: token channels C.
        num_heads: attention heads; must divide ``dim``.
        num_clusters: M; 0 means full self-attention.
        clustering: module producing assignment logits (B, M, N), or None when the block reuses the
            assignment of an earlier block of its stage, or of the external teacher.
    """

    def __init__(self, dim: int, num_heads: int, num_clusters: int, clustering: Optional[nn.Module] = None) -> None:
        super().__init__()
        if num_clusters == 0 and clustering is not None:
            raise ValueError('clustering must be None when num_clusters is 0 (full self-attention)')
        self.num_heads = num_heads
        self.num_clusters = num_clusters
        self.clustering = clustering
        # the clustering's logits are a temporary of this forward: the weights may overwrite them
        self.assign = SoftAssignment(overwrite_logits=True) if clustering is not None else None
        self.cluster_norm = nn.LayerNorm(dim, eps=1e-6) if num_clusters > 0 else None
        self.q = OneDNNLinear(dim, dim)
        self.k = OneDNNLinear(dim, dim)
        self.v = OneDNNLinear(dim, dim)
        self.proj = OneDNNLinear(dim, dim)

    def forward(
        self, x: torch.Tensor, hw: tuple[int, int], assignment: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: normalised tokens (B, N, C). Returns the attention output and the assignment (B, M, N)."""
        keys, values, assignment = self.keys_values(x, hw, assignment)
        # Each query attends to the same keys, independently of the other queries: on CPUs the queries run
        # band by band, with their scores and outputs in the cache.
        return map_row_bands(lambda tokens, *_: self.attend(tokens, keys, values), x, hw, 4 * x.shape[-1]), assignment

    def keys_values(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        assignment: Optional[torch.Tensor] = None,
        norm: Optional[nn.Module] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Keys and values (B, heads, M, C / heads) of the cluster tokens of x (B, N, C), or of its N tokens
        with full self-attention, and the assignment (B, M, N): computed here in a clustering block, else the
        one passed in (an earlier block's or the teacher's). x is normalised, or is the block's input and
        ``norm`` its LayerNorm: then the clustering and the pooling normalise x band by band on CPUs, and no
        normalised copy of the whole map is made."""
        if self.num_clusters == 0:
            context = x if norm is None else norm(x)
        else:
            if self.clustering is not None:
                # the weights may overwrite the logits, unless a forward hook on the clustering may keep them
                assignment = self.assign(self.clustering(x, hw, norm), has_forward_hooks(self.clustering))
            elif assignment is None:
                raise RuntimeError('this block reuses a cluster assignment but none was passed in')
            context = self.cluster_norm(pool_clusters(assignment, x, norm))  # Z_{M,C}, Eqn. 2
        keys, values = (self._split_heads(t) for t in fused_linear(context, (self.k, self.v)))
        return keys, values, assignment

    def attend(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The attention output of the normalised tokens x (B, n, C), any subset of the map's tokens."""
        return self.proj(multi_head_attention(self.q(x), keys, values))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, 'b n (h d) -> b h n d', h=self.num_heads)


class PaCaBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(PaCa(LN(x))), then x + DropPath(FFN(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_clusters: int,
        clustering: Optional[nn.Module],
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PatchToClusterAttention(dim, num_heads, num_clusters, clustering)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DWConvFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        assignment: Optional[torch.Tensor] = None,
        overwrite_input: bool = False,
        output_norm: Optional[nn.Module] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: tokens (B, H*W, C). With ``overwrite_input`` (for a caller to whom x is a temporary) the output may be
        written over x on CPUs (:func:`~mmcluster.models.layers.map_row_bands`). ``output_norm``, if given, is
        applied to the output, band by band where the block runs in bands: the stage's closing LayerNorm, whose
        input nothing else reads."""
        # Only the keys and values need the whole map. The rest of the block is local: row-wise up to the
        # FFN's first linear layer, whose output the FFN's 3x3 conv sees one row up and down. So on CPUs it
        # runs band by band, the row-wise part once per row, each band's intermediates in the cache and only
        # the block output allocated at full size (map_row_bands). The clustering, the pooling and each band
        # of queries then normalise their own rows, and LN(x) is never stored whole.
        hidden_dim = self.mlp.fc1.out_features
        normed: Optional[torch.Tensor] = None
        if not self.runs_in_bands(x, hw):
            normed = self.norm1(x)
            keys, values, assignment = self.attn.keys_values(normed, hw, assignment)
        else:
            keys, values, assignment = self.attn.keys_values(x, hw, assignment, norm=self.norm1)
        attn_scale = mlp_scale = None
        if self.training and isinstance(self.drop_path, DropPath):
            # DropPath keeps or drops each sample's branch: drawn once for the whole map, not per band
            attn_scale, mlp_scale = (self.drop_path(x.new_ones(x.shape[0], 1, 1)) for _ in range(2))

        def rowwise(tokens: torch.Tensor, _: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
            queries = normed if normed is not None else self.norm1(tokens)
            tokens = _residual(tokens, self.attn.attend(queries, keys, values), attn_scale)
            return tokens, self.mlp.fc1(self.norm2(tokens))

        def local(tokens: torch.Tensor, hidden: torch.Tensor, band: tuple[int, int], rows: slice) -> torch.Tensor:
            out = _residual(tokens, self.mlp.mix(hidden, band, rows), mlp_scale)
            return out if output_norm is None else output_norm(out)

        out = map_row_bands(local, x, hw, hidden_dim, halo=1, rowwise=rowwise, overwrite_input=overwrite_input)
        return out, assignment

    def runs_in_bands(self, x: torch.Tensor, hw: tuple[int, int]) -> bool:
        """Whether :meth:`forward` runs band by band on tokens x (B, H*W, C) of an H x W map (its widest intermediate
        is the FFN's hidden tokens, and the FFN's 3x3 conv needs one row of halo)."""
        return band_height(x, hw, self.mlp.fc1.out_features, halo=1) is not None


def _residual(x: torch.Tensor, branch: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """x + branch, or x + scale * branch with a per-sample DropPath scale (B, 1, 1): 0 or 1 / keep rate."""
    return x + branch if scale is None else torch.addcmul(x, scale, branch)


class PaCaStage(nn.Module):
    """Downsampling, ``depth`` PaCa blocks and the stage-end LayerNorm (Fig. 3).

    With stage-wise assignment only block 0 has a clustering module and the later blocks reuse its
    assignment (each still pools its own normalised input and has its own cluster_norm, k and v);
    block-wise, every block clusters. With an external teacher no block clusters: all use the
    teacher's assignment, and the teacher's stage feature is added before the stage norm.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        num_clusters: int,
        clustering: Clustering,
        assignment: Assignment,
        mlp_ratio: float,
        drop_path_rates: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.downsample = ConvDownsample(in_dim, dim) if downsample else nn.Identity()

        def clustering_module(block_index: int) -> Optional[nn.Module]:
            if num_clusters == 0 or clustering == 'teacher':
                return None
            if assignment == 'stage' and block_index > 0:
                return None
            if clustering == 'conv':
                return ConvClustering(dim, num_clusters)
            return MlpClustering(dim, num_clusters, hidden_ratio=mlp_ratio)

        self.blocks = nn.ModuleList(
            [
                PaCaBlock(dim, num_heads, num_clusters, clustering_module(j), mlp_ratio, drop_path_rates[j])
                for j in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        assignment: Optional[torch.Tensor] = None,
        teacher_feature: Optional[torch.Tensor] = None,
        temporary_input: bool = False,
    ) -> torch.Tensor:
        """x: (B, C_in, H_in, W_in) map; returns the normalised stage output (B, C, H, W). With ``temporary_input``
        (for a caller to whom x is a temporary: the stem's output where no teacher reads it) the first block may
        write over x in inference, unless a forward hook on this stage may keep it; the downsampling's output is a
        temporary of this stage anyway."""
        x = self.downsample(x)  # a channels-last map (ConvDownsample), so the tokens are a view of it
        height, width = x.shape[-2:]
        x = rearrange(x, 'b c h w -> b (h w) c')
        # Where the blocks run in bands (CPUs, large maps; the blocks of a stage have the same widths), inference keeps
        # fewer full-size maps, unless a forward hook on a module concerned may keep one (at 1600x2560 a stage-0 map is
        # 94 MiB, which glibc's malloc would otherwise give fresh pages on each pass):
        # - a block's output is written over its input, the output of the block before or of the downsampling (or the
        #   stem's, with temporary_input), a temporary of this loop;
        # - the last block applies the stage norm to its bands itself (the norm reads the block's output only).
        # Only in inference (with gradients the norm's weight and bias gradients would be summed band by band). The
        # hooks are checked only there, each module once: a block's also decide whether the next one writes over its
        # output.
        in_bands = not torch.is_grad_enabled() and self.blocks[0].runs_in_bands(x, (height, width))
        # the caller's x is this stage's input too, which a forward hook on the stage sees
        temporary = (temporary_input and not has_forward_hooks(self)) or isinstance(self.downsample, ConvDownsample)
        source_hooked = in_bands and forward_hooks_within(self.downsample)
        normed = False
        for j, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, assignment = checkpoint(block, x, (height, width), assignment, use_reentrant=False)
                continue
            hooked = in_bands and forward_hooks_within(block)
            overwrite = in_bands and (j > 0 or temporary) and not hooked and not source_hooked
            normed = in_bands and j == len(self.blocks) - 1 and not hooked and teacher_feature is None
            normed = normed and not forward_hooks_within(self.norm)
            x, assignment = block(
                x, (height, width), assignment, overwrite_input=overwrite, output_norm=self.norm if normed else None
            )
            source_hooked = hooked
        if teacher_feature is not None:
            x = x + rearrange(teacher_feature, 'b c h w -> b (h w) c')
        # A channels-last view; the mm backbone returns its maps as contiguous NCHW (BackboneContract.forward)
        return rearrange(x if normed else self.norm(x), 'b (h w) c -> b c h w', h=height, w=width)


# ---------------------------------------------------------------------------------------------------
# External clustering teacher (Sec. 3.2.3, Fig. 4; `PaCaTeacher_ConvMixer` in models/paca_vit.py): a
# ConvMixer CNN with a top-down FPN, trained jointly with the ViT. It shares the ViT's stem, gives every
# stage its assignment, and its bottom-up stage features are added to the ViT's stage outputs.


class ConvActNorm(nn.Module):
    """Conv (with bias), GELU, BatchNorm: the order of the official teacher's layers. The submodules are
    named ``conv`` and ``bn``, as mmcv's ``ConvModule`` names them, so checkpoints keep their keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.act(self.conv(x)))


class ConvMixerLayer(nn.Module):
    """ConvMixer layer (Trockman & Kolter): x + BN(GELU(DWConv_k(x))), then BN(GELU(PWConv(.)))."""

    def __init__(self, dim: int, kernel_size: int = CLUSTERING_KERNEL_SIZE) -> None:
        super().__init__()
        self.spatial_mix = ConvActNorm(dim, dim, kernel_size, groups=dim)
        self.channel_mix = ConvActNorm(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mix(x + self.spatial_mix(x))


class TeacherDownsample(nn.Module):
    """Anti-aliased stride-2 conv, then GELU and BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = BlurConv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.act = nn.GELU()
        # named `bn`, not `norm`: the recipes' "no weight decay on norm" rule matched none of the teacher's
        # BatchNorms in the official model
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.act(self.conv(x)))


class ConvMixerClusteringTeacher(nn.Module):
    """The external clustering teacher of Fig. 4.

    Bottom-up: ConvMixer stages (widths = the ViT's) on the ViT stem output. Top-down (FPN): for
    i = 3..1, fpn[i] = ConvMixer(out[i] + lateral(upsample(fpn[i+1]))), with fpn[4] = out[4]. The
    assignment of stage i is softmax_N(Conv1x1(fpn[i])).
    """

    def __init__(
        self,
        dims: Sequence[int],
        depths: Sequence[int],
        num_clusters: Sequence[int],
        kernel_size: int = CLUSTERING_KERNEL_SIZE,
    ) -> None:
        super().__init__()
        num_stages = len(dims)
        self.downsamples = nn.ModuleList([TeacherDownsample(dims[i], dims[i + 1]) for i in range(num_stages - 1)])
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*[ConvMixerLayer(dims[i], kernel_size) for _ in range(depths[i])])
                for i in range(num_stages)
            ]
        )
        self.laterals = nn.ModuleList([ConvActNorm(dims[i + 1], dims[i], 1) for i in range(num_stages - 1)])
        self.fpn_layers = nn.ModuleList([ConvMixerLayer(dims[i], kernel_size) for i in range(num_stages - 1)])
        self.to_clusters = nn.ModuleDict(
            {str(i): nn.Conv2d(dims[i], m, 1) for i, m in enumerate(num_clusters) if m > 0}
        )
        self.assign = SoftAssignment()

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
        """x: the ViT stem output. Returns the bottom-up stage features and per-stage assignments (B, M, N)."""
        features = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            x = stage(x)
            features.append(x)
        pyramid = [None] * len(features)
        pyramid[-1] = features[-1]
        for i in range(len(features) - 2, -1, -1):
            top_down = F.interpolate(pyramid[i + 1], size=features[i].shape[-2:], mode='bilinear', align_corners=False)
            pyramid[i] = self.fpn_layers[i](features[i] + self.laterals[i](top_down))
        assignments = [
            self.assign(self.to_clusters[str(i)](p).flatten(2)) if str(i) in self.to_clusters else None
            for i, p in enumerate(pyramid)
        ]
        return features, assignments

    def stage_modules(self, index: int) -> list[nn.Module]:
        """The teacher's layers that serve ViT stage ``index`` (frozen with it)."""
        modules: list[nn.Module] = [self.stages[index]]
        if index > 0:
            modules.append(self.downsamples[index - 1])
        if index < len(self.fpn_layers):
            modules += [self.fpn_layers[index], self.laterals[index]]
        if str(index) in self.to_clusters:
            modules.append(self.to_clusters[str(index)])
        return modules


# ---------------------------------------------------------------------------------------------------


def init_paca_weights(module: nn.Module) -> None:
    """The official initialisation: trunc-normal(0.02) Linear, unit norms, fan-out normal convs."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, _BatchNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PaCaViTClassifier(HierarchicalViT):
    """PaCa-ViT image classifier (registered in timm as ``paca_*``): the network, mean pooling of the last
    (normalised) stage map, a Linear head. timm's whole model interface comes from :class:`HierarchicalViT`.

    Args:
        arch: a key of :data:`PACA_ARCHS` (``tiny``, ``small``, ``base``, ``{tiny,small,base}_teacher``)
            or a dict with ``embed_dims``, ``depths``, ``num_heads`` (4 entries each) and, for the
            external teacher, ``teacher_depths``.
        num_clusters: clusters M per stage; 0 makes that stage full self-attention. Default
            (100, 100, 100, 0) onsite and (100, 100, 100, 100) with the teacher, as in the paper.
        clustering: ``'conv'`` (Eqns. 4-5), ``'mlp'`` (Eqn. 6) or ``'teacher'`` (Fig. 4). Default:
            ``'teacher'`` for the teacher archs, else ``'conv'``.
        assignment: where the assignment is computed: ``'stage'`` (first block of each stage, shared by
            the others) or ``'block'`` (every block). Not used with the teacher.
        mlp_ratio: FFN (and MLP-clustering) expansion ratio.
        drop_path_rate: stochastic depth, increased linearly over all blocks from 0.
        in_chans: input image channels.
        num_classes: classifier outputs; 0 for none (``forward`` then returns the pooled features).
        global_pool: ``'avg'`` or ``''`` (no pooling).
        drop_rate: dropout before the classifier (0 in the paper's recipe).
    """

    stem_pattern = r'^(?:patch_embed|teacher)'  # the teacher runs on the stem output, before stage 0

    def __init__(
        self,
        arch: Union[str, dict] = 'tiny',
        num_clusters: Optional[Sequence[int]] = None,
        clustering: Optional[Clustering] = None,
        assignment: Assignment = 'stage',
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(arch, str):
            if arch not in PACA_ARCHS:
                raise ValueError(f'arch must be one of {sorted(PACA_ARCHS)} or a dict, got {arch!r}')
            arch = PACA_ARCHS[arch]
        elif not isinstance(arch, dict):
            raise ValueError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = {'embed_dims', 'depths', 'num_heads'} - set(arch)
        unknown = set(arch) - {'embed_dims', 'depths', 'num_heads', 'teacher_depths'}
        if missing or unknown:
            raise ValueError(
                f'arch dict needs embed_dims, depths, num_heads (and optionally teacher_depths); '
                f'missing {sorted(missing)}, unknown {sorted(unknown)}'
            )
        embed_dims = check_per_stage('arch.embed_dims', arch['embed_dims'], 4, 1)
        num_stages = len(embed_dims)
        depths = check_per_stage('arch.depths', arch['depths'], num_stages, 1)
        num_heads = check_per_stage('arch.num_heads', arch['num_heads'], num_stages, 1)
        teacher_depths = arch.get('teacher_depths')

        if clustering is None:
            clustering = 'teacher' if teacher_depths is not None else 'conv'
        if clustering not in ('conv', 'mlp', 'teacher'):
            raise ValueError(f"clustering must be 'conv', 'mlp' or 'teacher', got {clustering!r}")
        if clustering == 'teacher':
            if teacher_depths is None:
                raise ValueError(
                    "clustering='teacher' needs an arch with teacher_depths "
                    f'(e.g. {[k for k in PACA_ARCHS if "teacher" in k]})'
                )
            teacher_depths = check_per_stage('arch.teacher_depths', teacher_depths, num_stages, 1)
        elif teacher_depths is not None:
            raise ValueError(f"arch has teacher_depths but clustering={clustering!r}; use clustering='teacher'")
        if assignment not in ('stage', 'block'):
            raise ValueError(f"assignment must be 'stage' or 'block', got {assignment!r}")
        if num_clusters is None:
            num_clusters = TEACHER_CLUSTERS if clustering == 'teacher' else ONSITE_CLUSTERS
        num_clusters = check_per_stage('num_clusters', num_clusters, num_stages, 0)
        for dim, heads in zip(embed_dims, num_heads):
            if dim % heads:
                raise ValueError(f'num_heads {num_heads} must divide embed_dims {embed_dims} stage by stage')
        drop_path_rate = check_rate('drop_path_rate', drop_path_rate)
        in_chans = check_int('in_chans', in_chans, 1)
        check_positive('mlp_ratio', mlp_ratio)

        self.embed_dims = embed_dims
        self.depths = depths
        self.num_clusters = num_clusters
        self.clustering = clustering
        self.assignment = assignment

        self.patch_embed = ConvDownsample(in_chans, embed_dims[0], num_convs=2)
        self.teacher = (
            ConvMixerClusteringTeacher(embed_dims, teacher_depths, num_clusters) if clustering == 'teacher' else None
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            self.stages.append(
                PaCaStage(
                    in_dim=embed_dims[max(i - 1, 0)],
                    dim=embed_dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    num_clusters=num_clusters[i],
                    clustering=clustering,
                    assignment=assignment,
                    mlp_ratio=mlp_ratio,
                    drop_path_rates=rates[first : first + depths[i]],
                    downsample=i > 0,
                )
            )
        self.init_classifier(num_classes, global_pool, drop_rate)
        self.reset_parameters()

    init_module = staticmethod(init_paca_weights)

    def stage_inputs(self, stem: torch.Tensor) -> list[dict]:
        """With the external teacher: each stage's assignment and the teacher feature added to its output; without
        it, whether stage 0 may write over the stem's output."""
        if self.teacher is None:
            # the stem's output is then a temporary of forward_stages, read by stage 0 only, unless a forward hook on
            # the stem may keep it
            inputs = super().stage_inputs(stem)
            inputs[0]['temporary_input'] = not forward_hooks_within(self.patch_embed)
            return inputs
        features, assignments = self.teacher(stem)
        return [dict(assignment=a, teacher_feature=f) for a, f in zip(assignments, features)]

    # -- the cluster-map protocol -------------------------------------------------------------------

    def clustering_layers(self) -> Iterator[tuple[str, int, nn.Module]]:
        """(name, stage index, module) of every layer that outputs assignment logits."""
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                if block.attn.clustering is not None:
                    yield f'stages.{i}.blocks.{j}.attn.clustering', i, block.attn.clustering
        if self.teacher is not None:
            for key, conv in self.teacher.to_clusters.items():
                if int(key) < len(self.stages):
                    yield f'teacher.to_clusters.{key}', int(key), conv

    @torch.no_grad()
    def cluster_maps(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        """Assignment logits of every clustering layer before the softmax over tokens, as (B, M, H_i, W_i).

        This is C_{N,M} of Sec. 3.3 reshaped to M spatial heatmaps, keyed by the layer's name; stage-wise
        models have one per clustered stage, block-wise models one per block.
        """
        layers = list(self.clustering_layers())
        outs, captured = self.forward_capturing(x, {name: module for name, _, module in layers})
        maps = OrderedDict()
        for name, stage, _ in layers:
            height, width = outs[stage].shape[-2:]
            maps[name] = captured[name].reshape(x.shape[0], -1, height, width)
        return maps


class PaCaViT(BackboneContract, PaCaViTClassifier):
    """PaCa-ViT backbone for MMDetection / MMSegmentation (registered as ``PaCaViT`` in both).

    The classifier's network without its head; the arguments are :class:`PaCaViTClassifier`'s (with
    ``in_channels`` for ``in_chans``) and :class:`~.base.BackboneContract`'s. ``frozen_stages=k`` freezes the
    stem and stages 0..k-1 with the teacher's layers that serve them; when ``num_clusters`` differs from a
    checkpoint's, the clustering output layers keep their fresh initialisation and the log names them.
    """

    family = 'paca_vit'
    arch_zoo = PACA_ARCHS  # the benchmark presets paca-tiny, paca-small-teacher, ... (BackboneContract)
    preset_prefix = 'paca'

    def __init__(
        self,
        arch: Union[str, dict] = 'tiny',
        num_clusters: Optional[Sequence[int]] = None,
        clustering: Optional[Clustering] = None,
        assignment: Assignment = 'stage',
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        init_cfg: Optional[dict] = None,
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__(
            arch,
            num_clusters=num_clusters,
            clustering=clustering,
            assignment=assignment,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            in_chans=in_channels,
            num_classes=0,
        )
        self.init_backbone(out_indices, frozen_stages, norm_eval, with_cp, init_cfg, pretrained)

    def stage_modules(self, index: int) -> list[nn.Module]:
        modules = super().stage_modules(index)
        if self.teacher is not None:
            modules += self.teacher.stage_modules(index)
        return modules


# ---------------------------------------------------------------------------------------------------
# Official checkpoint layout (models/paca_vit.py and segmentation/mmseg_custom/models/decode_heads/
# paca_head.py of iVMCL/PaCaViT) -> this module's. Official stage indices are 1-based (`stage1`, `norm1`,
# `paca_teacher.block1`); `transition{i}` (after official stage i) is the downsample of our stage i, and the
# teacher's `transition{i}`, `lateral{i}`, `fpn{i}` sit between stages i and i+1. Which keys of a clustering
# module map where depends on its type: conv clustering has keys 0, 2, 4 (DW conv, PW conv, output), MLP
# clustering 0, 2 (hidden, output); `{s}` is the 0-based stage.

_BACKBONE_RULES: list[tuple[str, str]] = [
    (r'^stage(\d)\.(\d+)\.norm1_before\.', 'stages.{s}.blocks.{1}.norm1.'),
    (r'^stage(\d)\.(\d+)\.norm2_before\.', 'stages.{s}.blocks.{1}.norm2.'),
    (
        r'^stage(\d)\.(\d+)\.attn\.clustering\.clustering\.0\.(weight|bias)$',
        'stages.{s}.blocks.{1}.attn.clustering.{conv_or_fc}.{2}',
    ),
    (
        r'^stage(\d)\.(\d+)\.attn\.clustering\.clustering\.2\.(weight|bias)$',
        'stages.{s}.blocks.{1}.attn.clustering.{pw_or_out}.{2}',
    ),
    (
        r'^stage(\d)\.(\d+)\.attn\.clustering\.clustering\.4\.weight$',
        'stages.{s}.blocks.{1}.attn.clustering.to_clusters.weight',
    ),
    (r'^stage(\d)\.(\d+)\.attn\.(q|k|v|proj|cluster_norm)\.', 'stages.{s}.blocks.{1}.attn.{2}.'),
    (r'^stage(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.', 'stages.{s}.blocks.{1}.mlp.dwconv.'),
    (r'^stage(\d)\.(\d+)\.mlp\.(fc1|fc2)\.', 'stages.{s}.blocks.{1}.mlp.{2}.'),
    (r'^norm(\d)\.', 'stages.{s}.norm.'),
    (r'^transition(\d)\.proj\.', 'stages.{0}.downsample.proj.0.'),
    (r'^transition(\d)\.norm\.', 'stages.{0}.downsample.norm.'),
    # External ConvMixer teacher. ConvMixer layer: {j}.0.fn.0 DW conv, {j}.0.fn.2 BN, {j}.1 PW conv, {j}.3 BN.
    (r'^paca_teacher\.block(\d)\.(\d+)\.0\.fn\.0\.', 'teacher.stages.{s}.{1}.spatial_mix.conv.'),
    (r'^paca_teacher\.block(\d)\.(\d+)\.0\.fn\.2\.', 'teacher.stages.{s}.{1}.spatial_mix.bn.'),
    (r'^paca_teacher\.block(\d)\.(\d+)\.1\.', 'teacher.stages.{s}.{1}.channel_mix.conv.'),
    (r'^paca_teacher\.block(\d)\.(\d+)\.3\.', 'teacher.stages.{s}.{1}.channel_mix.bn.'),
    (r'^paca_teacher\.fpn(\d)\.0\.fn\.0\.', 'teacher.fpn_layers.{s}.spatial_mix.conv.'),
    (r'^paca_teacher\.fpn(\d)\.0\.fn\.2\.', 'teacher.fpn_layers.{s}.spatial_mix.bn.'),
    (r'^paca_teacher\.fpn(\d)\.1\.', 'teacher.fpn_layers.{s}.channel_mix.conv.'),
    (r'^paca_teacher\.fpn(\d)\.3\.', 'teacher.fpn_layers.{s}.channel_mix.bn.'),
    (r'^paca_teacher\.transition(\d)\.0\.blur_filter$', 'teacher.downsamples.{s}.conv.blur_filter'),
    (r'^paca_teacher\.transition(\d)\.0\.conv\.', 'teacher.downsamples.{s}.conv.conv.'),
    (r'^paca_teacher\.transition(\d)\.2\.', 'teacher.downsamples.{s}.bn.'),
    (r'^paca_teacher\.lateral(\d)\.0\.', 'teacher.laterals.{s}.conv.'),
    (r'^paca_teacher\.lateral(\d)\.2\.', 'teacher.laterals.{s}.bn.'),
    (r'^paca_teacher\.to_clusters(\d)\.', 'teacher.to_clusters.{s}.'),
    (r'^(patch_embed\.proj\.[01]\.|patch_embed\.norm\.|head\.)', '{0}'),
]

# The official `PaCaSegHead` (keys without the `decode_head.` prefix) -> mmcluster's PaCaHead.
_HEAD_RULES: list[tuple[str, str]] = [
    (r'^q\.0\.', 'query.'),
    (r'^clustering\.0\.', 'cluster_embed.'),
    (r'^clustering\.1\.', 'to_clusters.'),
    (r'^k\.0\.', 'key.linear.'),
    (r'^k\.2\.', 'key.norm.'),
    (r'^v\.0\.', 'value.linear.'),
    (r'^v\.2\.', 'value.norm.'),
    (r'^(convs\.\d+\.(conv|bn)\.|proj\.(conv|bn)\.|conv_seg\.)', '{0}'),
]
_HEAD_MARKERS = ('q.0.', 'clustering.0.', 'k.0.', 'v.0.')


def _mlp_clustering_blocks(state_dict: dict) -> set[str]:
    """Official blocks (``stage{i}.{j}``) whose clustering is the MLP type (a 2-d first weight)."""
    suffix = '.attn.clustering.clustering.0.weight'
    return {
        k[: -len(suffix)] for k, v in state_dict.items() if k.startswith('stage') and k.endswith(suffix) and v.ndim == 2
    }


def _backbone_fields(groups: tuple, mlp_blocks: set[str]) -> dict:
    stage = ''
    if groups and groups[0].isdigit():
        if int(groups[0]) < 1:
            raise KeyError(f'official PaCa-ViT stage indices start at 1, got stage {groups[0]}')
        stage = str(int(groups[0]) - 1)
    is_mlp = len(groups) > 1 and f'stage{groups[0]}.{groups[1]}' in mlp_blocks
    return dict(
        s=stage, conv_or_fc='fc' if is_mlp else 'spatial_mix', pw_or_out='to_clusters' if is_mlp else 'channel_mix'
    )


def is_official_state_dict(state_dict: dict) -> bool:
    """Whether ``state_dict`` (without any ``backbone.`` prefix) uses the official PaCa-ViT key layout."""
    return any(k.startswith(('stage1.', 'norm1.', 'transition1.', 'paca_teacher.')) for k in state_dict)


def _is_cluster_count_dependent(key: str) -> bool:
    """Tensors whose shape depends on the number of clusters M (the clustering output layers)."""
    return '.to_clusters.' in f'.{key}'


PACA_CONVERTER = register_converter(
    FamilyConverter(
        family='paca_vit',
        is_official=is_official_state_dict,
        backbone=RuleTable(
            'official PaCa-ViT backbone', _BACKBONE_RULES, context=_mlp_clustering_blocks, fields=_backbone_fields
        ),
        head=RuleTable('official PaCa segmentation head', _HEAD_RULES),
        head_markers=_HEAD_MARKERS,
        may_reinit=_is_cluster_count_dependent,
    )
)
convert_official_state_dict = PACA_CONVERTER.convert_backbone
convert_official_head_state_dict = PACA_CONVERTER.head


# ---------------------------------------------------------------------------------------------------
# ImageNet classifiers, registered in timm. The official release files are the ImageNet-1k checkpoints
# of github.com/iVMCL/PaCaViT/releases (the tiny teacher variant has none).

OFFICIAL_RELEASE_URL = 'https://github.com/iVMCL/PaCaViT/releases/download/pacavit/'


def _cfg(filename: Optional[str] = None, **kwargs) -> dict:
    return dict(
        url=OFFICIAL_RELEASE_URL + filename if filename else '',
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.9,
        interpolation='bicubic',
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv='patch_embed.proj.0',
        classifier='head',
        license='unknown (official PaCa-ViT release)',
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {  # read by timm's register_model
        'paca_tiny.in1k': _cfg('IMNET_224_pacavit_tiny_p2cconv_100_0.pth'),
        'paca_small.in1k': _cfg('IMNET_224_pacavit_small_p2cconv_100_0.pth'),
        'paca_base.in1k': _cfg('IMNET_224_pacavit_base_p2cconv_100_0.pth'),
        'paca_small_mlp.in1k': _cfg('IMNET_224_pacavit_small_p2cmlp_100_0.pth'),
        'paca_tiny_teacher': _cfg(),
        'paca_small_teacher.in1k': _cfg('IMNET_224_pacavit_convmixer_small_100.pth'),
        'paca_base_teacher.in1k': _cfg('IMNET_224_pacavit_convmixer_base_100.pth'),
    }
)


def _create_paca(variant: str, pretrained: bool, defaults: dict, **kwargs) -> PaCaViTClassifier:
    return create_timm_model(PaCaViTClassifier, variant, pretrained, 'paca_vit', **dict(defaults, **kwargs))


@register_model
def paca_tiny(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Tiny: conv clustering, 100 clusters in stages 1-3, full attention in stage 4."""
    return _create_paca('paca_tiny', pretrained, dict(arch='tiny', drop_path_rate=0.1), **kwargs)


@register_model
def paca_small(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Small: conv clustering, 100 clusters in stages 1-3, full attention in stage 4."""
    return _create_paca('paca_small', pretrained, dict(arch='small', drop_path_rate=0.1), **kwargs)


@register_model
def paca_base(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Base: conv clustering, 100 clusters in stages 1-3, full attention in stage 4."""
    return _create_paca('paca_base', pretrained, dict(arch='base', drop_path_rate=0.5), **kwargs)


@register_model
def paca_small_mlp(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Small with MLP clustering (Eqn. 6)."""
    return _create_paca(
        'paca_small_mlp', pretrained, dict(arch='small', clustering='mlp', drop_path_rate=0.1), **kwargs
    )


@register_model
def paca_tiny_teacher(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Tiny with the external ConvMixer clustering teacher (Fig. 4), 100 clusters in every stage."""
    return _create_paca('paca_tiny_teacher', pretrained, dict(arch='tiny_teacher', drop_path_rate=0.1), **kwargs)


@register_model
def paca_small_teacher(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Small with the external ConvMixer clustering teacher (Fig. 4), 100 clusters in every stage."""
    return _create_paca('paca_small_teacher', pretrained, dict(arch='small_teacher', drop_path_rate=0.1), **kwargs)


@register_model
def paca_base_teacher(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    """PaCa-Base with the external ConvMixer clustering teacher (Fig. 4), 100 clusters in every stage."""
    return _create_paca('paca_base_teacher', pretrained, dict(arch='base_teacher', drop_path_rate=0.1), **kwargs)
