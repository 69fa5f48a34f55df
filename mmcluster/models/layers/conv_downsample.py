"""Overlapping strided-conv patch embedding / downsampling."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from .clustering import forward_hooks_within
from .row_bands import band_height


class ConvDownsample(nn.Module):
    """``num_convs`` stride-2 3x3 convs (no activation between them), then a channel LayerNorm.

    With ``num_convs=2`` (3 -> out/2 -> out) this is PaCa-ViT's stride-4 stem; with one conv it is the
    stride-2 transition between stages. Any input size works: each conv maps H to ceil(H / 2). The output
    is a channels-last map.

    On CPUs, at detection resolutions, it runs band by band of output rows (:func:`~.row_bands.band_height`):
    each band's convs read only the input rows they need (a 3x3 stride-2 conv's output row r reads input rows
    2r - 1 .. 2r + 1) and its normalised rows are copied into the output. The intermediates stay in the cache
    and are never allocated at full size: the stem's first conv output is 188 MiB at 1600x2560, which glibc's
    malloc by default gives fresh pages on every pass (``docs/benchmarks.md``). The same convolutions, with
    the zero padding at the map's top and bottom only; the first conv's rows under two bands run twice. Not
    where a forward hook on a conv, on ``proj`` or on the norm expects one call on the whole map.
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
        heights, width = [x.shape[2]], x.shape[3]
        for conv in self.proj:
            heights.append(self._output_size(conv, heights[-1], 0))
            width = self._output_size(conv, width, 1)
        # the values per output token of the widest map: the input or a conv's output under it (2 x 2 per stride-2 conv)
        hidden = max(conv.in_channels * 4 ** (len(self.proj) - i) for i, conv in enumerate(self.proj))
        rows = band_height(x, (heights[-1], width), hidden)
        # in bands the convs are called as functions: not where a forward hook on one of them, on proj or on the norm
        # expects a call
        if rows is None or forward_hooks_within(self.proj, self.norm):
            return self.norm(self.proj(x.contiguous(memory_format=torch.channels_last)))
        out = None
        for top in range(0, heights[-1], rows):
            bottom = min(top + rows, heights[-1])
            band = self.norm(self._rows(x, heights, top, bottom))
            if out is None:  # the dtype the norm gives (under autocast, not always x's)
                shape = (x.shape[0], band.shape[1], heights[-1], width)
                out = torch.empty(shape, dtype=band.dtype, device=x.device, memory_format=torch.channels_last)
            out[:, :, top:bottom] = band
        return out

    @staticmethod
    def _output_size(conv: nn.Conv2d, size: int, dim: int) -> int:
        k, s, p = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim]
        return (size + 2 * p - k) // s + 1

    def _rows(self, x: torch.Tensor, heights: list[int], top: int, bottom: int) -> torch.Tensor:
        """Rows ``top .. bottom - 1`` of ``self.proj(x)``, from the input rows they need only."""
        spans = []  # each conv's output rows and the input rows they need (padding included), last conv first
        first, last = top, bottom
        for conv, height_in in zip(reversed(self.proj), reversed(heights[:-1])):
            spans.append((last - first, *self._input_rows(conv, first, last)))
            first, last = max(spans[-1][1], 0), min(spans[-1][2], height_in)
        band = x[:, :, first:last].contiguous(memory_format=torch.channels_last)
        for conv, height_in in zip(self.proj, heights[:-1]):
            out_rows, needed_first, needed_last = spans.pop()
            pad_top, pad_bottom = max(-needed_first, 0), max(needed_last - height_in, 0)
            if pad_top == conv.padding[0]:
                # the conv's own zero padding (pad_bottom <= padding always): below, it is either past the rows asked
                # for or the padding they need
                padding = conv.padding
            else:
                padding = (0, conv.padding[1])
                if pad_top or pad_bottom:  # the zero padding at the map's bottom
                    band = F.pad(band, (0, 0, pad_top, pad_bottom))
            band = F.conv2d(band, conv.weight, conv.bias, conv.stride, padding)[:, :, :out_rows]
        return band

    @staticmethod
    def _input_rows(conv: nn.Conv2d, top: int, bottom: int) -> tuple[int, int]:
        """The input rows (padding included: may be < 0 or past the map) of the conv's output rows top .. bottom - 1."""
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        return top * s - p, (bottom - 1) * s - p + k
