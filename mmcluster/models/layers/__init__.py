"""Layers shared by mmcluster's model families."""
from .blur_conv import BlurConv2d
from .conv_downsample import ConvDownsample
from .ffn import DWConvFFN

__all__ = ['BlurConv2d', 'ConvDownsample', 'DWConvFFN']
