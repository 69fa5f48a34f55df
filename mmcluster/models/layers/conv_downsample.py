"""Overlapping strided-conv patch embedding / downsampling."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d


class ConvDownsample(nn.Module):
    """``num_convs`` stride-2 3x3 convs (no activation between them), then a channel LayerNorm.

    With ``num_convs=2`` (3 -> out/2 -> out) this is PaCa-ViT's stride-4 stem; with one conv it is the
    stride-2 transition between stages. Any input size works: each conv maps H to ceil(H / 2). The output
    is a channels-last map.
    """

    def __init__(self, in_channels: int, out_channels: int, num_convs: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f'num_convs must be >= 1, got {num_convs}')
        widths = [in_channels] + [out_channels // 2 ** (num_convs - 1 - i) for i in range(num_convs)]
        self.proj = nn.Sequential(
            *[nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1) for cin, cout in zip(widths[:-1], widths[1:])]
        )
        # channels-last weights too, or every call converts them to the input's layout
        self.proj.to(memory_format=torch.channels_last)
        self.norm = LayerNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last: oneDNN's CPU convolutions run about twice as fast on it as on NCHW, and the output is
        # then laid out as (B, H, W, C) tokens, which the LayerNorm and the following transformer blocks read.
        return self.norm(self.proj(x.contiguous(memory_format=torch.channels_last)))
