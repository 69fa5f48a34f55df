"""Anti-aliased strided convolution."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BlurConv2d(nn.Module):
    """A fixed depth-wise binomial blur ([1, 2, 1]^T [1, 2, 1] / 16, stride 1, zero padding 1) before a conv.

    Blurring before the strided conv reduces aliasing (Zhang, "Making convolutional networks
    shift-invariant again", 2019). The filter is a persistent buffer, so checkpoints carry it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16.0
        self.register_buffer('blur_filter', kernel.expand(in_channels, 1, 3, 3).clone())
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter.to(x.dtype), padding=1, groups=x.shape[1])
        return self.conv(blurred)
