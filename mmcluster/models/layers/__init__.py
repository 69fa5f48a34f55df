"""Layers shared by mmcluster's model families."""
from .blur_conv import BlurConv2d
from .clustering import soft_assignment
from .conv_downsample import ConvDownsample
from .ffn import DWConvFFN

__all__ = ['BlurConv2d', 'ConvDownsample', 'DWConvFFN', 'soft_assignment']
