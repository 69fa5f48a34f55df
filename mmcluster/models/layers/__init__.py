"""Layers shared by mmcluster's model families (torch, timm and einops only)."""
from .blur_conv import BlurConv2d
from .clustering import SoftAssignment, pool_clusters, soft_assignment
from .conv_downsample import ConvDownsample
from .ffn import DWConvFFN

__all__ = ['BlurConv2d', 'ConvDownsample', 'DWConvFFN', 'SoftAssignment', 'pool_clusters', 'soft_assignment']
