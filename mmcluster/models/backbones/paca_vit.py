"""PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers (Grainger et al., CVPR 2023).

Equation and figure numbers refer to the paper (../shared/papers/paca_vit.md). The architecture
follows the official implementation exactly (parameter counts, layer order, initialisation); official
checkpoints are mapped onto this module layout by :func:`convert_official_state_dict`.

Module layout::

    PaCaViT
    ├── patch_embed        ConvDownsample: two stride-2 3x3 convs + LayerNorm2d (stride 4)
    ├── teacher            ConvMixerClusteringTeacher (only for the external-clustering variants, Fig. 4)
    └── stages[i]          PaCaStage
        ├── downsample     ConvDownsample (stages 1-3; Identity in stage 0)
        ├── blocks[j]      PaCaBlock: x + PaCa(LN(x)), x + FFN(LN(x))
        │   └── attn       PatchToClusterAttention, with its own `clustering` module when the block
        │                  computes the assignment (stage-wise: block 0 only; block-wise: every block)
        └── norm           LayerNorm at the end of the stage (its output is the stage's feature map)
"""
from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from typing import Iterator, Literal, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import DropPath, trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import BlurConv2d, ConvDownsample, DWConvFFN, soft_assignment

Clustering = Literal['conv', 'mlp', 'teacher']
Assignment = Literal['stage', 'block']

# Variant table of the official models (spec §2.1). Teacher variants use the external ConvMixer-FPN
# clustering teacher; their ViT depths are reduced so that the total stays close to the onsite models.
PACA_ARCHS: dict[str, dict] = {
    'tiny': dict(embed_dims=(96, 192, 320, 384), depths=(2, 2, 4, 2), num_heads=(2, 4, 8, 16)),
    'small': dict(embed_dims=(96, 192, 320, 384), depths=(3, 3, 10, 3), num_heads=(2, 4, 8, 16)),
    'base': dict(embed_dims=(96, 192, 384, 512), depths=(3, 3, 18, 3), num_heads=(2, 4, 8, 16)),
    'tiny_teacher': dict(embed_dims=(96, 192, 320, 384), depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16),
                         teacher_depths=(2, 2, 2, 2)),
    'small_teacher': dict(embed_dims=(96, 192, 320, 384), depths=(3, 3, 7, 3), num_heads=(2, 4, 8, 16),
                          teacher_depths=(2, 2, 2, 2)),
    'base_teacher': dict(embed_dims=(96, 192, 384, 512), depths=(3, 3, 16, 3), num_heads=(2, 4, 8, 16),
                         teacher_depths=(2, 2, 4, 2)),
}
ONSITE_CLUSTERS = (100, 100, 100, 0)  # clusters per stage; 0 = full self-attention
TEACHER_CLUSTERS = (100, 100, 100, 100)
CLUSTERING_KERNEL_SIZE = 7


def _per_stage(name: str, value: Sequence, num_stages: int) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != num_stages:
        raise ValueError(f'{name} must be a sequence with one entry per stage ({num_stages}), got {value!r}')
    return tuple(value)


# ---------------------------------------------------------------------------------------------------
# Onsite clustering modules (Sec. 3.2.1). Each maps normalised tokens (B, N, C) on an H x W grid to
# assignment logits (B, M, N); the softmax over N (Eqns. 5, 6) is taken by PatchToClusterAttention.
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

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = rearrange(x, 'b (h w) c -> b c h w', h=hw[0], w=hw[1])
        x = self.act(self.channel_mix(self.act(self.spatial_mix(x))))
        return self.to_clusters(x).flatten(2)


class MlpClustering(nn.Module):
    """Clustering via MLP, Eqn. 6: Linear C -> 4C + GELU, Linear 4C -> M."""

    def __init__(self, dim: int, num_clusters: int, hidden_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.to_clusters = nn.Linear(hidden, num_clusters)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.to_clusters(self.act(self.fc(x))).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------


class PatchToClusterAttention(nn.Module):
    """Patch-to-cluster attention, Eqns. 1-2.

    Queries come from the N patch tokens X; keys and values from M cluster tokens
    Z = LayerNorm(C^T X) (Eqn. 2), where C^T (B, M, N) is the soft assignment. With ``num_clusters=0``
    this is ordinary multi-head self-attention over all N tokens. Attention runs through torch's fused
    ``scaled_dot_product_attention`` (scale head_dim ** -0.5).

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
        self.cluster_norm = nn.LayerNorm(dim, eps=1e-6) if num_clusters > 0 else None
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int],
                assignment: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: normalised tokens (B, N, C). Returns the attention output and the assignment (B, M, N)."""
        if self.num_clusters > 0:
            if self.clustering is not None:
                assignment = soft_assignment(self.clustering(x, hw))
            elif assignment is None:
                raise RuntimeError('this block reuses a cluster assignment but none was passed in')
            context = self.cluster_norm(torch.matmul(assignment.to(x.dtype), x))  # Z_{M,C}, Eqn. 2
        else:
            context = x
        q = rearrange(self.q(x), 'b n (h d) -> b h n d', h=self.num_heads)
        k = rearrange(self.k(context), 'b m (h d) -> b h m d', h=self.num_heads)
        v = rearrange(self.v(context), 'b m (h d) -> b h m d', h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, 'b h n d -> b n (h d)')), assignment


class PaCaBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(PaCa(LN(x))), then x + DropPath(FFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, num_clusters: int, clustering: Optional[nn.Module],
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PatchToClusterAttention(dim, num_heads, num_clusters, clustering)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DWConvFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int],
                assignment: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        out, assignment = self.attn(self.norm1(x), hw, assignment)
        x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x), hw))
        return x, assignment


class PaCaStage(nn.Module):
    """Downsampling, ``depth`` PaCa blocks and the stage-end LayerNorm (Fig. 3).

    With stage-wise assignment only block 0 has a clustering module and the later blocks reuse its
    assignment (each still pools its own normalised input and has its own cluster_norm, k and v);
    block-wise, every block clusters. With an external teacher no block clusters: all use the
    teacher's assignment, and the teacher's stage feature is added before the stage norm.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, num_clusters: int,
                 clustering: Clustering, assignment: Assignment, mlp_ratio: float,
                 drop_path_rates: Sequence[float], downsample: bool) -> None:
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

        self.blocks = nn.ModuleList([
            PaCaBlock(dim, num_heads, num_clusters, clustering_module(j), mlp_ratio, drop_path_rates[j])
            for j in range(depth)
        ])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, assignment: Optional[torch.Tensor] = None,
                teacher_feature: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C_in, H_in, W_in) map; returns the normalised stage output (B, C, H, W)."""
        x = self.downsample(x)
        height, width = x.shape[-2:]
        x = rearrange(x, 'b c h w -> b (h w) c')
        for block in self.blocks:
            x, assignment = block(x, (height, width), assignment)
        if teacher_feature is not None:
            x = x + rearrange(teacher_feature, 'b c h w -> b (h w) c')
        # Contiguous NCHW, not a channels-last view: convs propagate that memory format into the neck, and
        # mmcv 2.1.0's compiled RoIAlign reads channels-last input as if it were NCHW (wrong features).
        return rearrange(self.norm(x), 'b (h w) c -> b c h w', h=height, w=width).contiguous()


# ---------------------------------------------------------------------------------------------------
# External clustering teacher (Sec. 3.2.3, Fig. 4): a ConvMixer CNN with a top-down FPN, trained jointly
# with the ViT. It shares the ViT's stem, gives every stage its assignment, and its bottom-up stage
# features are added to the ViT's stage outputs.


def _conv_act_norm(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1,
                   norm_cfg: Optional[dict] = None) -> ConvModule:
    # The conv bias is not redundant here (GELU sits between conv and norm), so mmcv's warning about a
    # bias before a norm does not apply.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Unnecessary conv bias')
        return ConvModule(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=True,
                          norm_cfg=norm_cfg or dict(type='BN'), act_cfg=dict(type='GELU'),
                          order=('conv', 'act', 'norm'))


class ConvMixerLayer(nn.Module):
    """ConvMixer layer (Trockman & Kolter): x + BN(GELU(DWConv_k(x))), then BN(GELU(PWConv(.)))."""

    def __init__(self, dim: int, kernel_size: int = CLUSTERING_KERNEL_SIZE, norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.spatial_mix = _conv_act_norm(dim, dim, kernel_size, groups=dim, norm_cfg=norm_cfg)
        self.channel_mix = _conv_act_norm(dim, dim, 1, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mix(x + self.spatial_mix(x))


class TeacherDownsample(nn.Module):
    """Anti-aliased stride-2 conv, then GELU and BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.conv = BlurConv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.act = nn.GELU()
        # named `bn`, not `norm`: the recipes' "no weight decay on norm" rule matched none of the teacher's
        # BatchNorms in the official model
        self.bn = build_norm_layer(norm_cfg or dict(type='BN'), out_channels)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.act(self.conv(x)))


class ConvMixerClusteringTeacher(nn.Module):
    """The external clustering teacher of Fig. 4.

    Bottom-up: ConvMixer stages (widths = the ViT's) on the ViT stem output. Top-down (FPN): for
    i = 3..1, fpn[i] = ConvMixer(out[i] + lateral(upsample(fpn[i+1]))), with fpn[4] = out[4]. The
    assignment of stage i is softmax_N(Conv1x1(fpn[i])).
    """

    def __init__(self, dims: Sequence[int], depths: Sequence[int], num_clusters: Sequence[int],
                 kernel_size: int = CLUSTERING_KERNEL_SIZE, norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        num_stages = len(dims)
        self.downsamples = nn.ModuleList(
            [TeacherDownsample(dims[i], dims[i + 1], norm_cfg) for i in range(num_stages - 1)])
        self.stages = nn.ModuleList([
            nn.Sequential(*[ConvMixerLayer(dims[i], kernel_size, norm_cfg) for _ in range(depths[i])])
            for i in range(num_stages)
        ])
        self.laterals = nn.ModuleList(
            [_conv_act_norm(dims[i + 1], dims[i], 1, norm_cfg=norm_cfg) for i in range(num_stages - 1)])
        self.fpn_layers = nn.ModuleList(
            [ConvMixerLayer(dims[i], kernel_size, norm_cfg) for i in range(num_stages - 1)])
        self.to_clusters = nn.ModuleDict(
            {str(i): nn.Conv2d(dims[i], m, 1) for i, m in enumerate(num_clusters) if m > 0})

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
            top_down = F.interpolate(pyramid[i + 1], size=features[i].shape[-2:], mode='bilinear',
                                     align_corners=False)
            pyramid[i] = self.fpn_layers[i](features[i] + self.laterals[i](top_down))
        assignments = [
            soft_assignment(self.to_clusters[str(i)](p).flatten(2)) if str(i) in self.to_clusters else None
            for i, p in enumerate(pyramid)
        ]
        return features, assignments


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


def _is_cluster_count_dependent(key: str) -> bool:
    """Tensors whose shape depends on the number of clusters M (the clustering output layers)."""
    return '.to_clusters.' in f'.{key}'


class PaCaViT(BaseModule):
    """PaCa-ViT backbone for MMDetection / MMSegmentation (registered as ``PaCaViT`` in both).

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
        in_channels: input image channels.
        out_indices: stages whose normalised maps are returned (strides 4, 8, 16, 32).
        frozen_stages: stages 0..frozen_stages (and the stem) are frozen; -1 freezes nothing.
        norm_eval: keep BatchNorm layers (in the teacher) in eval mode during training.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=None)`` loads weights after
            the initialisation; official PaCa-ViT checkpoints are converted on the fly. When ``num_clusters``
            differs from the checkpoint's, the clustering output layers keep their fresh initialisation
            and the log names them.
    """

    def __init__(self, arch: Union[str, dict] = 'tiny', num_clusters: Optional[Sequence[int]] = None,
                 clustering: Optional[Clustering] = None, assignment: Assignment = 'stage',
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch not in PACA_ARCHS:
                raise ValueError(f'arch must be one of {sorted(PACA_ARCHS)} or a dict, got {arch!r}')
            arch = PACA_ARCHS[arch]
        elif not isinstance(arch, dict):
            raise ValueError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = {'embed_dims', 'depths', 'num_heads'} - set(arch)
        unknown = set(arch) - {'embed_dims', 'depths', 'num_heads', 'teacher_depths'}
        if missing or unknown:
            raise ValueError(f'arch dict needs embed_dims, depths, num_heads (and optionally teacher_depths); '
                             f'missing {sorted(missing)}, unknown {sorted(unknown)}')
        embed_dims = _per_stage('arch.embed_dims', arch['embed_dims'], 4)
        num_stages = len(embed_dims)
        depths = _per_stage('arch.depths', arch['depths'], num_stages)
        num_heads = _per_stage('arch.num_heads', arch['num_heads'], num_stages)
        teacher_depths = arch.get('teacher_depths')

        if clustering is None:
            clustering = 'teacher' if teacher_depths is not None else 'conv'
        if clustering not in ('conv', 'mlp', 'teacher'):
            raise ValueError(f"clustering must be 'conv', 'mlp' or 'teacher', got {clustering!r}")
        if clustering == 'teacher':
            if teacher_depths is None:
                raise ValueError("clustering='teacher' needs an arch with teacher_depths "
                                 f'(e.g. {[k for k in PACA_ARCHS if "teacher" in k]})')
            teacher_depths = _per_stage('arch.teacher_depths', teacher_depths, num_stages)
        elif teacher_depths is not None:
            raise ValueError(f'arch has teacher_depths but clustering={clustering!r}; use clustering=\'teacher\'')
        if assignment not in ('stage', 'block'):
            raise ValueError(f"assignment must be 'stage' or 'block', got {assignment!r}")
        if num_clusters is None:
            num_clusters = TEACHER_CLUSTERS if clustering == 'teacher' else ONSITE_CLUSTERS
        num_clusters = _per_stage('num_clusters', num_clusters, num_stages)
        for name, values, minimum in (('num_clusters', num_clusters, 0), ('arch.embed_dims', embed_dims, 1),
                                      ('arch.depths', depths, 1), ('arch.num_heads', num_heads, 1)):
            if any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in values):
                raise ValueError(f'{name} must hold integers >= {minimum}, got {values}')
        for dim, heads in zip(embed_dims, num_heads):
            if dim % heads:
                raise ValueError(f'num_heads {num_heads} must divide embed_dims {embed_dims} stage by stage')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive integer, got {in_channels!r}')
        if mlp_ratio <= 0:
            raise ValueError(f'mlp_ratio must be positive, got {mlp_ratio}')
        out_indices = tuple(out_indices)
        if not out_indices or any(not 0 <= i < num_stages for i in out_indices):
            raise ValueError(f'out_indices must be non-empty indices in [0, {num_stages}), got {out_indices}')
        if not -1 <= frozen_stages < num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages - 1}], got {frozen_stages}')

        self.embed_dims = embed_dims
        self.depths = depths
        self.num_clusters = num_clusters
        self.clustering = clustering
        self.assignment = assignment
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.patch_embed = ConvDownsample(in_channels, embed_dims[0], num_convs=2)
        self.teacher = (ConvMixerClusteringTeacher(embed_dims, teacher_depths, num_clusters)
                        if clustering == 'teacher' else None)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            self.stages.append(PaCaStage(
                in_dim=embed_dims[max(i - 1, 0)], dim=embed_dims[i], depth=depths[i], num_heads=num_heads[i],
                num_clusters=num_clusters[i], clustering=clustering, assignment=assignment, mlp_ratio=mlp_ratio,
                drop_path_rates=rates[first:first + depths[i]], downsample=i > 0))
        self.apply(init_paca_weights)
        self._freeze_stages()

    # -- forward --------------------------------------------------------------------------------------

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All stage outputs (B, C_i, H_i, W_i) at strides 4, 8, 16, 32, for any input size."""
        x = self.patch_embed(x)
        if self.teacher is not None:
            teacher_features, assignments = self.teacher(x)
        else:
            teacher_features = assignments = [None] * len(self.stages)
        outs = []
        for stage, assignment, teacher_feature in zip(self.stages, assignments, teacher_features):
            x = stage(x, assignment, teacher_feature)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.forward_stages(x)
        return tuple(outs[i] for i in self.out_indices)

    def clustering_layers(self) -> Iterator[tuple[str, int, nn.Module]]:
        """(name, stage index, module) of every layer that outputs assignment logits."""
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                if block.attn.clustering is not None:
                    yield f'stages.{i}.blocks.{j}.attn.clustering', i, block.attn.clustering
        if self.teacher is not None:
            for key, conv in self.teacher.to_clusters.items():
                yield f'teacher.to_clusters.{key}', int(key), conv

    @torch.no_grad()
    def cluster_logits(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        """Assignment logits of every clustering layer before the softmax over tokens, as (B, M, H_i, W_i).

        This is C_{N,M} of Sec. 3.3 reshaped to M spatial heatmaps, keyed by the layer's name; stage-wise
        models have one per clustered stage, block-wise models one per block.
        """
        captured: dict[str, torch.Tensor] = {}
        handles = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                   for name, _, module in self.clustering_layers()]
        try:
            outs = self.forward_stages(x)
        finally:
            for handle in handles:
                handle.remove()
        logits = OrderedDict()
        for name, stage, _ in self.clustering_layers():
            height, width = outs[stage].shape[-2:]
            logits[name] = captured[name].reshape(x.shape[0], -1, height, width)
        return logits

    # -- training-mode helpers ------------------------------------------------------------------------

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed] + [self.stages[i] for i in range(self.frozen_stages + 1)]
        if self.teacher is not None:
            for i in range(self.frozen_stages + 1):
                frozen.append(self.teacher.stages[i])
                if i > 0:
                    frozen.append(self.teacher.downsamples[i - 1])
                if i < len(self.teacher.fpn_layers):
                    frozen += [self.teacher.fpn_layers[i], self.teacher.laterals[i]]
                if str(i) in self.teacher.to_clusters:
                    frozen.append(self.teacher.to_clusters[str(i)])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'PaCaViT':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # -- weights ------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Initialise from scratch, then load ``init_cfg``'s checkpoint (if any) over it.

        Loading happens here, after the initialisation, so that mmengine's Runner (which calls
        ``init_weights`` before training) cannot overwrite pretrained weights.
        """
        from mmcluster.utils.checkpoint import load_pretrained

        self.apply(init_paca_weights)
        if self.init_cfg is not None:
            init_cfg = dict(self.init_cfg)
            if init_cfg.get('type') != 'Pretrained' or 'checkpoint' not in init_cfg:
                raise ValueError("PaCaViT init_cfg must be dict(type='Pretrained', checkpoint=..., prefix=None), "
                                 f'got {self.init_cfg}')
            load_pretrained(self, init_cfg['checkpoint'], prefix=init_cfg.get('prefix'),
                            convert=convert_official_state_dict, may_reinit=_is_cluster_count_dependent,
                            ignore_unexpected=('head.',), logger=MMLogger.get_current_instance())
        self._is_init = True
        self._freeze_stages()


# ---------------------------------------------------------------------------------------------------
# Official checkpoint layout (spec §2.11, §4) -> this module's.

_OFFICIAL_RULES: list[tuple[str, str]] = [
    # ViT stages. transition{i} (after stage i, 1-indexed) is the downsample of our stage i (0-indexed).
    (r'^stage(\d)\.(\d+)\.norm1_before\.', 'stages.{s}.blocks.{1}.norm1.'),
    (r'^stage(\d)\.(\d+)\.norm2_before\.', 'stages.{s}.blocks.{1}.norm2.'),
    (r'^stage(\d)\.(\d+)\.attn\.clustering\.clustering\.0\.(weight|bias)$', 'stages.{s}.blocks.{1}.attn.clustering.{conv_or_fc}.{2}'),
    (r'^stage(\d)\.(\d+)\.attn\.clustering\.clustering\.2\.(weight|bias)$', 'stages.{s}.blocks.{1}.attn.clustering.{pw_or_out}.{2}'),
    (r'^stage(\d)\.(\d+)\.attn\.clustering\.clustering\.4\.weight$', 'stages.{s}.blocks.{1}.attn.clustering.to_clusters.weight'),
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


def is_official_state_dict(state_dict: dict) -> bool:
    """Whether ``state_dict`` (without any ``backbone.`` prefix) uses the official PaCa-ViT key layout."""
    return any(k.startswith(('stage1.', 'norm1.', 'transition1.', 'paca_teacher.')) for k in state_dict)


def convert_official_state_dict(state_dict: dict) -> 'OrderedDict[str, torch.Tensor]':
    """Map an official PaCa-ViT state dict (iVMCL/PaCaViT, spec §2.11) onto :class:`PaCaViT`'s keys.

    Official stage indices are 1-based (``stage1``, ``norm1``, ``paca_teacher.block1``); the teacher's
    ``transition{i}``, ``lateral{i}`` and ``fpn{i}`` sit between stages i and i+1. Which keys of the
    clustering module map where depends on its type: the conv type has keys 0, 2, 4 (DW conv, PW conv,
    output), the MLP type 0, 2 (hidden, output). A state dict that is already in our layout is returned
    unchanged. Raises KeyError on a key that matches no rule.
    """
    if not is_official_state_dict(state_dict):
        return OrderedDict(state_dict)
    mlp_blocks = {m.group(1) for k in state_dict if (m := re.match(r'^(stage\d\.\d+)\.attn\.clustering\.clustering\.0\.weight$', k))
                  and state_dict[k].ndim == 2}
    converted = OrderedDict()
    for key, value in state_dict.items():
        for pattern, template in _OFFICIAL_RULES:
            match = re.match(pattern, key)
            if match is None:
                continue
            groups = match.groups()
            block = f'stage{groups[0]}.{groups[1]}' if len(groups) > 1 else ''
            is_mlp = block in mlp_blocks
            stage = ''
            if groups and groups[0].isdigit():
                if int(groups[0]) < 1:
                    raise KeyError(f'official PaCa-ViT stage indices start at 1, got {key}')
                stage = str(int(groups[0]) - 1)
            new_prefix = template.format(
                *groups, s=stage, conv_or_fc='fc' if is_mlp else 'spatial_mix',
                pw_or_out='to_clusters' if is_mlp else 'channel_mix')
            converted[new_prefix + key[match.end():]] = value
            break
        else:
            raise KeyError(f'unexpected key in an official PaCa-ViT state dict: {key}')
    return converted


# ---------------------------------------------------------------------------------------------------
# ImageNet classifiers, registered in timm.


class PaCaViTClassifier(PaCaViT):
    """PaCa-ViT image classifier: the backbone, mean pooling of the last (normalised) stage, a Linear head.

    Follows timm's model interface (``forward_features``, ``forward_head``, ``reset_classifier``).
    """

    def __init__(self, arch: Union[str, dict] = 'tiny', num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, **kwargs) -> None:
        if 'out_indices' in kwargs:
            raise ValueError('out_indices is not an argument of the classifier; use PaCaViT for feature maps')
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}')
        super().__init__(arch, in_channels=in_chans, out_indices=(3,), **kwargs)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)  # before the classifier; 0 in the paper's recipe
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_paca_weights)
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f'stages.{i}')
                             for i, c in enumerate(self.embed_dims)]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, 'avg'):
            raise ValueError(f"PaCa-ViT pools by averaging; global_pool must be 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_paca_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


OFFICIAL_RELEASE_URL = 'https://github.com/iVMCL/PaCaViT/releases/download/pacavit/'

# timm model name -> (PaCaViTClassifier arguments, official ImageNet-1k checkpoint file or None).
PACA_TIMM_VARIANTS: dict[str, tuple[dict, Optional[str]]] = {
    'paca_tiny': (dict(arch='tiny', drop_path_rate=0.1), 'IMNET_224_pacavit_tiny_p2cconv_100_0.pth'),
    'paca_small': (dict(arch='small', drop_path_rate=0.1), 'IMNET_224_pacavit_small_p2cconv_100_0.pth'),
    'paca_base': (dict(arch='base', drop_path_rate=0.5), 'IMNET_224_pacavit_base_p2cconv_100_0.pth'),
    'paca_small_mlp': (dict(arch='small', clustering='mlp', drop_path_rate=0.1),
                       'IMNET_224_pacavit_small_p2cmlp_100_0.pth'),
    'paca_tiny_teacher': (dict(arch='tiny_teacher', drop_path_rate=0.1), None),
    'paca_small_teacher': (dict(arch='small_teacher', drop_path_rate=0.1), 'IMNET_224_pacavit_convmixer_small_100.pth'),
    'paca_base_teacher': (dict(arch='base_teacher', drop_path_rate=0.1), 'IMNET_224_pacavit_convmixer_base_100.pth'),
}


def _pretrained_cfg(filename: Optional[str]) -> dict:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return dict(url=OFFICIAL_RELEASE_URL + filename if filename else '', num_classes=1000,
                input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9, interpolation='bicubic',
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv='patch_embed.proj.0',
                classifier='head', license='unknown (official PaCa-ViT release)')


def _timm_default_cfgs() -> dict:
    from timm.models import generate_default_cfgs
    return generate_default_cfgs({
        f'{name}.in1k' if filename else name: _pretrained_cfg(filename)
        for name, (_, filename) in PACA_TIMM_VARIANTS.items()
    })


default_cfgs = _timm_default_cfgs()  # read by timm's register_model


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """timm ``pretrained_filter_fn``: unwrap the checkpoint and map official keys onto ours."""
    from mmcluster.utils.checkpoint import extract_state_dict
    return convert_official_state_dict(extract_state_dict(state_dict))


def _create_paca(variant: str, pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
    from timm.models import build_model_with_cfg
    return build_model_with_cfg(PaCaViTClassifier, variant, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                **dict(PACA_TIMM_VARIANTS[variant][0], **kwargs))


def _register_timm_models() -> None:
    from timm.models import register_model

    def entrypoint(variant: str):
        def create(pretrained: bool = False, **kwargs) -> PaCaViTClassifier:
            return _create_paca(variant, pretrained, **kwargs)
        create.__name__ = create.__qualname__ = variant
        create.__module__ = __name__
        create.__doc__ = f'{variant}: PaCa-ViT classifier, {PACA_TIMM_VARIANTS[variant][0]}.'
        return create

    for variant in PACA_TIMM_VARIANTS:
        register_model(entrypoint(variant))


_register_timm_models()
