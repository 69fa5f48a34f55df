"""Layers shared by mmcluster's model families (torch, timm and einops only)."""

from .attention import multi_head_attention
from .blur_conv import BlurConv2d
from .clustering import SoftAssignment, forward_hooks_within, has_forward_hooks, pool_clusters, soft_assignment
from .conv_downsample import ConvDownsample
from .equitable_clustering import (
    EquitableLayout,
    SemanticScores,
    cluster_ids,
    equitable_cluster_attention,
    equitable_layout,
    resolve_num_clusters,
)
from .ffn import DWConvFFN
from .rope import RoPE2d, apply_rope, rope_angles, rotate_pairs
from .row_bands import (
    OneDNNLinear,
    band_height,
    batched_matmul,
    contiguous_nchw,
    conv_rows,
    linear,
    linear_tokens_last,
    map_row_bands,
)
from .seca import LCE_KERNEL_SIZE, SECAttention
from .token_clustering import (
    FullResolutionSwitch,
    TokenClustering,
    TokenClusters,
    TokenReconstruction,
    cluster_tokens,
    neighbourhood_mask,
    reconstruction_weights,
)

__all__ = [
    'BlurConv2d',
    'ConvDownsample',
    'DWConvFFN',
    'EquitableLayout',
    'FullResolutionSwitch',
    'LCE_KERNEL_SIZE',
    'OneDNNLinear',
    'RoPE2d',
    'SECAttention',
    'SemanticScores',
    'SoftAssignment',
    'TokenClustering',
    'TokenClusters',
    'TokenReconstruction',
    'apply_rope',
    'band_height',
    'batched_matmul',
    'cluster_ids',
    'cluster_tokens',
    'contiguous_nchw',
    'conv_rows',
    'equitable_cluster_attention',
    'equitable_layout',
    'forward_hooks_within',
    'has_forward_hooks',
    'linear',
    'linear_tokens_last',
    'map_row_bands',
    'multi_head_attention',
    'neighbourhood_mask',
    'pool_clusters',
    'reconstruction_weights',
    'resolve_num_clusters',
    'rope_angles',
    'rotate_pairs',
    'soft_assignment',
]
