"""SecViT: Semantic Equitable Clustering vision transformers (Fan et al., arXiv 2405.13337).

Equation, section and table numbers refer to the paper. The architecture is the one of the official
implementation (github.com/qhfan/SecViT, ``classfication_release/SecViT.py`` at its final commit) that
produced the released ImageNet checkpoints: parameter counts, layer order and initialisation are the
official ones. Official checkpoints map onto this module layout through the ``secvit`` converter registered
at the end of this file.

Two deliberate extensions of the official code (both leave the official computation unchanged where that
applies, see :mod:`mmcluster.models.layers.equitable_clustering`):

* any number of tokens: the official attention asserts that the cluster count divides N; here the sorted
  sequence is padded to c * ceil(N / c) slots, padding keys masked and padding queries dropped;
* ``tokens_per_cluster``: the cluster count of a stage follows the input (ceil(N / size)), so the cost of
  attention stays linear in N at detection resolutions instead of growing quadratically inside 32 / 8 / 2
  ever larger clusters.

This file needs torch, timm and einops only: the timm classifiers work without the OpenMMLab stack, and
the mmdet / mmseg backbone is the same network with :class:`~.base.BackboneContract` mixed in.

Module layout (all maps channels-first, (B, C, H, W))::

    SecViTClassifier / SecViT
    ├── patch_embed        ConvStem: four 3x3 convs + BN (GELU after the first three), stride 4
    ├── stages[i]          SecViTStage
    │   ├── downsample     3x3 stride-2 conv + BN (stages 1-3; the official `layers.{i-1}.downsample`)
    │   ├── rope           RoPE2d: the per-stage `angle` buffer (`layers.{i}.RoPE.angle`)
    │   └── blocks[j]      SecViTBlock: x + CPE(x), x + SECA(LN(x)), x + FFN(LN(x)) (layer scale in B/L 3-4)
    │       └── attn       SECAttention: qkv, LCE (`lepe`), RoPE, SEC (`scores`), out_proj
    ├── proj, norm, act    1x1 conv C4 -> 1024, BatchNorm, SiLU (the classifier's pre-logits; not in SecViT)
    ├── head               1x1 conv classifier on the pooled 1024-d features (Identity in the backbone)
    └── extra_norms        SecViT (mm backbone) only: a channel LayerNorm per output stage
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..conversion import FamilyConverter, RuleTable, register_converter
from ..layers import RoPE2d, SECAttention, cluster_ids
from .base import (
    BackboneContract,
    HierarchicalViT,
    check_indices,
    check_int,
    check_per_stage,
    check_positive,
    check_rate,
    create_timm_model,
)

# The official variants (qhfan/SecViT classfication_release/SecViT.py, builders *_T/_S/_M/_L; the official
# code calls base "M"). `layer_scale`: stages whose blocks have layer scale (gamma_1, gamma_2, init 1e-6);
# `drop_path_rate`: the ImageNet recipe's maximum.
SECVIT_ARCHS: dict[str, dict] = {
    'tiny': dict(
        embed_dims=(64, 128, 256, 512),
        depths=(2, 2, 9, 2),
        num_heads=(2, 4, 8, 16),
        layer_scale=(False, False, False, False),
        drop_path_rate=0.1,
    ),
    'small': dict(
        embed_dims=(64, 128, 256, 512),
        depths=(3, 4, 18, 4),
        num_heads=(2, 4, 8, 16),
        layer_scale=(False, False, False, False),
        drop_path_rate=0.15,
    ),
    'base': dict(
        embed_dims=(80, 160, 320, 512),
        depths=(4, 8, 26, 8),
        num_heads=(5, 5, 10, 16),
        layer_scale=(False, False, True, True),
        drop_path_rate=0.4,
    ),
    'large': dict(
        embed_dims=(112, 224, 448, 640),
        depths=(4, 8, 26, 8),
        num_heads=(7, 7, 14, 20),
        layer_scale=(False, False, True, True),
        drop_path_rate=0.5,
    ),
}
DEFAULT_CLUSTERS = (32, 8, 2, 0)  # clusters per stage (Appendix A); <= 1 = full attention (stage 4)
MLP_RATIO = 3.0
LAYER_SCALE_INIT = 1e-6
HEAD_HIDDEN_SIZE = 1024


# ---------------------------------------------------------------------------------------------------
# Layers


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (eps 1e-6), applied channels-last. The LayerNorm is
    the attribute ``norm``, as in the official ``LayerNorm2d`` wrapper (keys ``...norm1.norm.weight``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """Appendix A: four 3x3 convs (strides 2, 1, 1, 2; widths C/2, C/2, C/2, C), each followed by BatchNorm,
    GELU after the first three. ``proj`` indices 0, 3, 6, 9 are the convs and 1, 4, 7, 10 the BatchNorms, as
    in the official state dict. Output size ceil(ceil(H / 2) / 2)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        half = dim // 2
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(
            [(in_chans, half, 2), (half, half, 1), (half, half, 1), (half, dim, 2)]
        ):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout)]
            if i < 3:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvBNDownsample(nn.Module):
    """3x3 stride-2 conv (with bias) and BatchNorm, no activation: the transition between stages."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class SecViTFFN(nn.Module):
    """1x1 conv C -> F, GELU, h + DWConv3x3(h), 1x1 conv F -> C (the official FFN of SecViT.py)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class SecViTBlock(nn.Module):
    """Eqn. 1: x + CPE(x) (``pos``, 3x3 depth-wise conv), x + DropPath(γ1·SECA(LN(x))),
    x + DropPath(γ2·FFN(LN(x))); γ (1, C, 1, 1) only with ``layer_scale_init``. One DropPath serves both
    residual branches, as in the official code."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_clusters: int,
        tokens_per_cluster: int,
        mlp_ratio: float = MLP_RATIO,
        drop_path: float = 0.0,
        layer_scale_init: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = SECAttention(dim, num_heads, num_clusters, tokens_per_cluster)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = SecViTFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_init = layer_scale_init
        if layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        out = self.attn(self.norm1(x), (sin, cos))
        x = x + self.drop_path(out if self.gamma_1 is None else self.gamma_1 * out)
        out = self.ffn(self.norm2(x))
        return x + self.drop_path(out if self.gamma_2 is None else self.gamma_2 * out)


class SecViTStage(nn.Module):
    """The downsampling into the stage (stages 1-3), the stage's RoPE tables (computed once per forward
    for its H x W) and its blocks. Returns the stage's map before any further downsampling: C_i channels at
    stride 4 * 2^i (contiguous NCHW)."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        num_clusters: int,
        tokens_per_cluster: int,
        mlp_ratio: float,
        drop_path_rates: Sequence[float],
        layer_scale_init: Optional[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.downsample = ConvBNDownsample(in_dim, dim) if downsample else nn.Identity()
        self.rope = RoPE2d(dim // num_heads)
        self.blocks = nn.ModuleList(
            [
                SecViTBlock(
                    dim, num_heads, num_clusters, tokens_per_cluster, mlp_ratio, drop_path_rates[j], layer_scale_init
                )
                for j in range(depth)
            ]
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        sin, cos = self.rope(*x.shape[-2:])
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, sin, cos, use_reentrant=False)
            else:
                x = block(x, sin, cos)
        return x.contiguous()


class ConvClassifier(nn.Conv2d):
    """The official classifier: a 1x1 conv (4-D weight, as in the checkpoints). On pooled features (B, C) it
    is the same affine map as a Linear (``in_features`` / ``out_features`` as a Linear names them); on a map
    (``global_pool=''``) it is applied per position."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes, 1)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return F.linear(x, self.weight.flatten(1), self.bias)
        return super().forward(x)


def init_secvit_weights(module: nn.Module) -> None:
    """Spec §2.9: every conv trunc-normal(std 0.02) with zero bias, LayerNorm 1 / 0, BatchNorm PyTorch's
    defaults, layer scale 1e-6."""
    if isinstance(module, nn.Conv2d):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, _BatchNorm):
        module.reset_parameters()
    elif isinstance(module, SecViTBlock) and module.gamma_1 is not None:
        nn.init.constant_(module.gamma_1, module.layer_scale_init)
        nn.init.constant_(module.gamma_2, module.layer_scale_init)


# ---------------------------------------------------------------------------------------------------


def _arch_settings(arch: Union[str, dict]) -> dict:
    if isinstance(arch, str):
        if arch not in SECVIT_ARCHS:
            raise ValueError(f'arch must be one of {sorted(SECVIT_ARCHS)} or a dict, got {arch!r}')
        return SECVIT_ARCHS[arch]
    if not isinstance(arch, dict):
        raise ValueError(f'arch must be a str or a dict, got {type(arch).__name__}')
    missing = {'embed_dims', 'depths', 'num_heads'} - set(arch)
    unknown = set(arch) - {'embed_dims', 'depths', 'num_heads', 'layer_scale', 'drop_path_rate'}
    if missing or unknown:
        raise ValueError(
            f'arch dict needs embed_dims, depths, num_heads (optionally layer_scale, drop_path_rate); '
            f'missing {sorted(missing)}, unknown {sorted(unknown)}'
        )
    return arch


def cluster_settings(
    num_clusters: Optional[Sequence[int]], tokens_per_cluster: Union[int, Sequence[int], None], num_stages: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-stage (cluster counts, tokens per cluster) from a backbone's two exclusive arguments: fixed counts
    (default :data:`DEFAULT_CLUSTERS`; <= 1 is full attention) or ``tokens_per_cluster`` (one int for every
    stage, or one per stage; 0 keeps a stage at full attention), which makes every count 0."""
    if num_clusters is not None and tokens_per_cluster is not None:
        raise ValueError('give num_clusters or tokens_per_cluster, not both')
    if tokens_per_cluster is None:
        sizes = (0,) * num_stages
    elif isinstance(tokens_per_cluster, numbers.Integral) and not isinstance(tokens_per_cluster, bool):
        sizes = (check_int('tokens_per_cluster', tokens_per_cluster, 1),) * num_stages
    else:
        sizes = check_per_stage('tokens_per_cluster', tokens_per_cluster, num_stages, 0)
    clusters = check_per_stage(
        'num_clusters', DEFAULT_CLUSTERS if num_clusters is None else num_clusters, num_stages, 0
    )
    if tokens_per_cluster is not None:
        clusters = (0,) * num_stages
    return clusters, sizes


class SecViTClassifier(HierarchicalViT):
    """SecViT image classifier (registered in timm as ``secvit_{tiny,small,base,large}``): the network, then
    the official head: 1x1 conv C4 -> 1024, BatchNorm, SiLU on the stride-32 map, mean pooling, 1x1 conv
    classifier. ``forward_head(x, pre_logits=True)`` returns the pooled 1024-d features (``num_features`` =
    ``head_hidden_size`` = 1024); ``reset_classifier(0)`` keeps the 1024-d projection, as timm's models
    with a pre-logits head do. timm's model interface comes from :class:`HierarchicalViT`.

    Args:
        arch: a key of :data:`SECVIT_ARCHS` (``tiny``, ``small``, ``base``, ``large``) or a dict with
            ``embed_dims``, ``depths``, ``num_heads`` (4 entries each) and optionally ``layer_scale``
            (4 bools) and ``drop_path_rate``.
        num_clusters: clusters per stage, the same in every block of the stage; <= 1 is full attention.
            Default (32, 8, 2, 0), the paper's. Not with ``tokens_per_cluster``.
        tokens_per_cluster: instead of fixed counts, tokens per cluster: each stage uses
            ceil(N / size) clusters for its N tokens (a single int for every stage, or one per stage with 0
            for a fixed full-attention stage). 98 reproduces the paper's 32 / 8 / 2 / full at 224x224 and
            keeps clusters at about 98 tokens at any resolution (attention cost linear in N).
        drop_path_rate: stochastic depth, increased linearly from 0 over all blocks. Default: the arch's
            ImageNet value (0.1 / 0.15 / 0.4 / 0.5 for T / S / B / L; 0 for a dict without one).
        mlp_ratio: FFN expansion (3).
        in_chans: input image channels.
        num_classes: classifier outputs; 0 for none (``forward`` then returns the pooled 1024-d features).
        global_pool: ``'avg'`` or ``''`` (no pooling).
        drop_rate: dropout before the classifier (0 in the official recipe).
        head_hidden_size: width of the 1x1 conv / BN / SiLU projection before pooling (1024); 0 for none
            (the pooled stage-4 map goes to the classifier directly).
    """

    def __init__(
        self,
        arch: Union[str, dict] = 'tiny',
        num_clusters: Optional[Sequence[int]] = None,
        tokens_per_cluster: Union[int, Sequence[int], None] = None,
        drop_path_rate: Optional[float] = None,
        mlp_ratio: float = MLP_RATIO,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
        head_hidden_size: int = HEAD_HIDDEN_SIZE,
    ) -> None:
        super().__init__()
        settings = _arch_settings(arch)
        embed_dims = check_per_stage('arch.embed_dims', settings['embed_dims'], 4, 1)
        num_stages = len(embed_dims)
        depths = check_per_stage('arch.depths', settings['depths'], num_stages, 1)
        num_heads = check_per_stage('arch.num_heads', settings['num_heads'], num_stages, 1)
        layer_scale = tuple(bool(v) for v in settings.get('layer_scale', (False,) * num_stages))
        if len(layer_scale) != num_stages:
            raise ValueError(f'arch.layer_scale must have one entry per stage, got {settings["layer_scale"]!r}')
        for dim, heads in zip(embed_dims, num_heads):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f'num_heads {num_heads} must divide embed_dims {embed_dims} stage by stage into '
                    f'head dimensions divisible by 4 (2-D RoPE)'
                )
        clusters, sizes = cluster_settings(num_clusters, tokens_per_cluster, num_stages)
        if drop_path_rate is None:
            drop_path_rate = settings.get('drop_path_rate', 0.0)
        drop_path_rate = check_rate('drop_path_rate', drop_path_rate)
        in_chans = check_int('in_chans', in_chans, 1)
        head_hidden_size = check_int('head_hidden_size', head_hidden_size, 0)
        check_positive('mlp_ratio', mlp_ratio)

        self.embed_dims = embed_dims
        self.depths = depths
        self.num_heads = num_heads
        self.num_clusters = clusters
        self.tokens_per_cluster = sizes

        self.patch_embed = ConvStem(in_chans, embed_dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            self.stages.append(
                SecViTStage(
                    in_dim=embed_dims[max(i - 1, 0)],
                    dim=embed_dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    num_clusters=clusters[i],
                    tokens_per_cluster=sizes[i],
                    mlp_ratio=mlp_ratio,
                    drop_path_rates=rates[first : first + depths[i]],
                    layer_scale_init=LAYER_SCALE_INIT if layer_scale[i] else None,
                    downsample=i > 0,
                )
            )
        if head_hidden_size:
            self.proj = nn.Conv2d(embed_dims[-1], head_hidden_size, 1)
            self.norm = nn.BatchNorm2d(head_hidden_size)
            self.act = nn.SiLU()
        else:
            self.proj = self.norm = self.act = None
        self.init_classifier(num_classes, global_pool, drop_rate)
        self.reset_parameters()

    init_module = staticmethod(init_secvit_weights)

    # -- the head -----------------------------------------------------------------------------------

    def _head_width(self) -> int:
        return self.proj.out_channels if self.proj is not None else self.embed_dims[len(self.stages) - 1]

    def init_classifier(self, num_classes: int, global_pool: str = 'avg', drop_rate: float = 0.0) -> None:
        super().init_classifier(num_classes, global_pool, drop_rate)
        self.num_features = self.head_hidden_size = self._head_width()

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = ConvClassifier(self._head_width(), num_classes)
        self.init_module(head)
        return head

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.proj is not None:
            x = self.act(self.norm(self.proj(x)))
        if self.global_pool == 'avg':
            x = x.mean(dim=(-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def prune_intermediate_layers(
        self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """As :meth:`HierarchicalViT.prune_intermediate_layers`; pruning the head also drops the 1024-d
        projection (``proj``, ``norm``), which only the classifier uses."""
        num_stages = len(self.stages)
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head or len(self.stages) < num_stages:
            self.proj = self.norm = self.act = None
            self.num_features = self.head_hidden_size = self._head_width()
        return take

    # -- the cluster-map protocol -------------------------------------------------------------------

    def clustering_layers(self, all_blocks: bool = False):
        """(name, stage index, attention) of the attention layers that cluster (first block of each stage,
        or every block)."""
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                if block.attn.scores is not None and (all_blocks or j == 0):
                    yield f'stages.{i}.blocks.{j}.attn', i, block.attn

    @torch.no_grad()
    def cluster_maps(
        self, x: torch.Tensor, all_blocks: bool = False, head: int = 0
    ) -> 'OrderedDict[str, torch.Tensor]':
        """The clusters of attention head ``head`` as one-hot maps (B, c, H_i, W_i): map[b, g, y, x] = 1 where
        token (y, x) is in cluster g (clusters numbered in sort order, from the keys least similar to the mean
        key). One map per clustered stage (its first block; every block with ``all_blocks``), keyed by the
        attention layer's name; stages that run full attention at this input size have none. This is what
        the paper's Fig. 4 colours."""
        layers = list(self.clustering_layers(all_blocks))
        outs, captured = self.forward_capturing(x, {name: attn.scores for name, _, attn in layers})
        maps = OrderedDict()
        for name, stage, attn in layers:
            if name not in captured:
                continue
            height, width = outs[stage].shape[-2:]
            clusters = attn.num_clusters_for(height * width)
            order = torch.argsort(captured[name][:, head : head + 1], dim=-1)
            ids = cluster_ids(order, clusters)[:, 0]
            maps[name] = F.one_hot(ids, clusters).transpose(1, 2).reshape(x.shape[0], clusters, height, width).float()
        return maps


class SecViT(BackboneContract, SecViTClassifier):
    """SecViT backbone for MMDetection / MMSegmentation (registered as ``SecViT`` in both).

    The classifier's network without its head (no ``proj`` / ``norm`` / ``head``). ``forward`` returns the
    selected stages' maps before downsampling (strides 4, 8, 16, 32; channels C1..C4), each through its own
    channel LayerNorm (``extra_norms.{i}``, eps 1e-6; not in the ImageNet checkpoint, initialised fresh), as
    the author's dense-task wrappers of the same code family do (qhfan/RMT, qhfan/RALA). ``frozen_stages=k`` freezes the
    stem and stages 0..k-1 with their extra norms.

    Args: those of :class:`SecViTClassifier` (``in_channels`` for ``in_chans``; ``num_clusters`` or
    ``tokens_per_cluster``) and :class:`~.base.BackboneContract`'s.
    """

    family = 'secvit'
    classifier_prefixes = ('head.', 'proj.', 'norm.')  # the 1024-wide classification head of the checkpoints
    arch_zoo = SECVIT_ARCHS  # benchmark presets secvit-tiny, ... (BackboneContract)

    def __init__(
        self,
        arch: Union[str, dict] = 'tiny',
        num_clusters: Optional[Sequence[int]] = None,
        tokens_per_cluster: Union[int, Sequence[int], None] = None,
        drop_path_rate: Optional[float] = None,
        mlp_ratio: float = MLP_RATIO,
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
            tokens_per_cluster=tokens_per_cluster,
            drop_path_rate=drop_path_rate,
            mlp_ratio=mlp_ratio,
            in_chans=in_channels,
            num_classes=0,
            head_hidden_size=0,
        )
        indices = check_indices('out_indices', out_indices, len(self.stages))
        self.extra_norms = nn.ModuleDict({str(i): ChannelLayerNorm(self.embed_dims[i]) for i in sorted(indices)})
        self.init_backbone(out_indices, frozen_stages, norm_eval, with_cp, init_cfg, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.forward_stages(x, max(self.out_indices) + 1)
        return [self.extra_norms[str(i)](outs[i]).contiguous() for i in self.out_indices]

    def stage_modules(self, index: int) -> list[nn.Module]:
        modules = super().stage_modules(index)
        if str(index) in self.extra_norms:
            modules.append(self.extra_norms[str(index)])
        return modules


# ---------------------------------------------------------------------------------------------------
# Official checkpoint layout (state dicts of qhfan/SecViT's SecViT.py) -> this module's. Official
# `layers.{i}` is our `stages.{i}`, except the downsample at the end of official stage i, which starts our
# stage i + 1. Every rule matches a whole key, so any key outside the official layout is an error that names it.

_PARAM = r'(weight|bias)'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_BACKBONE_RULES: list[tuple[str, str]] = [
    (rf'^patch_embed\.proj\.(0|3|6|9)\.{_PARAM}$', 'patch_embed.proj.{0}.{1}'),
    (rf'^patch_embed\.proj\.(1|4|7|10)\.{_BN}$', 'patch_embed.proj.{0}.{1}'),
    (r'^layers\.([0-3])\.RoPE\.angle$', 'stages.{0}.rope.angle'),
    (
        rf'^layers\.([0-3])\.blocks\.(\d+)\.(pos|norm1\.norm|norm2\.norm|attn\.qkv|attn\.lepe|attn\.out_proj'
        rf'|ffn\.fc1|ffn\.dwconv|ffn\.fc2)\.{_PARAM}$',
        'stages.{0}.blocks.{1}.{2}.{3}',
    ),
    (r'^layers\.([0-3])\.blocks\.(\d+)\.(gamma_1|gamma_2)$', 'stages.{0}.blocks.{1}.{2}'),
    (rf'^layers\.([0-2])\.downsample\.reduction\.{_PARAM}$', 'stages.{next}.downsample.reduction.{1}'),
    (rf'^layers\.([0-2])\.downsample\.norm\.{_BN}$', 'stages.{next}.downsample.norm.{1}'),
    (rf'^(proj|head)\.{_PARAM}$', '{0}.{1}'),
    (rf'^norm\.{_BN}$', 'norm.{0}'),
]


def _backbone_fields(groups: tuple, context) -> dict:
    return dict(next=int(groups[0]) + 1) if groups and groups[0].isdigit() else {}


def is_official_state_dict(state_dict: dict) -> bool:
    """Whether ``state_dict`` (without any ``backbone.`` prefix) uses the official SecViT key layout."""
    return any(k.startswith('layers.') for k in state_dict)


SECVIT_CONVERTER = register_converter(
    FamilyConverter(
        family='secvit',
        is_official=is_official_state_dict,
        backbone=RuleTable('official SecViT', _BACKBONE_RULES, fields=_backbone_fields),
    )
)
convert_official_state_dict = SECVIT_CONVERTER.convert_backbone


# ---------------------------------------------------------------------------------------------------
# ImageNet classifiers, registered in timm.

_NO_URL = (
    'The official ImageNet-1k checkpoints are published on Baidu pan only (links in the README of '
    'github.com/qhfan/SecViT); there is no direct URL. Download one and load it with '
    "timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/file.pth')). "
    "The files hold 'model' and 'model_ema'; the README accuracies are model_ema's for S/B/L and model's "
    'for T.'
)


def _cfg(**kwargs) -> dict:
    return dict(
        url='',
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation='bicubic',
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv='patch_embed.proj.0',
        classifier='head',
        license='mit',
        origin_url='https://github.com/qhfan/SecViT',
        paper_ids='arXiv:2405.13337',
        paper_name='Semantic Equitable Clustering: A Simple, Fast and Effective Strategy for Vision Transformer',
        notes=(_NO_URL,),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {  # read by timm's register_model
        'secvit_tiny.in1k': _cfg(),
        'secvit_small.in1k': _cfg(),
        'secvit_base.in1k': _cfg(),
        'secvit_large.in1k': _cfg(),
    }
)

_NOT_CLASSIFIER_ARGS = ('features_only', 'out_indices', 'feature_cls', 'feature_cfg', 'output_stride', 'num_classes')


def _create_secvit(variant: str, pretrained: bool, arch: str, **kwargs) -> SecViTClassifier:
    kwargs = dict(arch=arch, **kwargs)
    if pretrained and kwargs.get('features_only'):
        # The feature extractor has no classifier head (pruned); the checkpoint's proj / norm / head belong to
        # the whole classifier. Load the whole classifier, then take the tensors the extractor keeps.
        features = create_timm_model(SecViTClassifier, variant, False, 'secvit', **kwargs)
        whole = create_timm_model(
            SecViTClassifier,
            variant,
            True,
            'secvit',
            **{k: v for k, v in kwargs.items() if k not in _NOT_CLASSIFIER_ARGS},
        )
        weights = whole.state_dict()
        features.model.load_state_dict({k: weights[k] for k in features.model.state_dict()}, strict=True)
        return features
    return create_timm_model(SecViTClassifier, variant, pretrained, 'secvit', **kwargs)


@register_model
def secvit_tiny(pretrained: bool = False, **kwargs) -> SecViTClassifier:
    """SecViT-T: 64-512 channels, depths 2-2-9-2, 32 / 8 / 2 clusters and full attention in stage 4."""
    return _create_secvit('secvit_tiny', pretrained, 'tiny', **kwargs)


@register_model
def secvit_small(pretrained: bool = False, **kwargs) -> SecViTClassifier:
    """SecViT-S: 64-512 channels, depths 3-4-18-4, 32 / 8 / 2 clusters and full attention in stage 4."""
    return _create_secvit('secvit_small', pretrained, 'small', **kwargs)


@register_model
def secvit_base(pretrained: bool = False, **kwargs) -> SecViTClassifier:
    """SecViT-B (official code name "M"): 80-512 channels, depths 4-8-26-8, layer scale in stages 3-4."""
    return _create_secvit('secvit_base', pretrained, 'base', **kwargs)


@register_model
def secvit_large(pretrained: bool = False, **kwargs) -> SecViTClassifier:
    """SecViT-L: 112-640 channels, depths 4-8-26-8, layer scale in stages 3-4."""
    return _create_secvit('secvit_large', pretrained, 'large', **kwargs)
