"""Two-dimensional axial rotary position embedding (RoPE) for attention on an H x W token grid.

The layout is the one of the RMT / SecViT family (interleaved pairs, first half of each head rotated by
the row index, second half by the column index):

* ``angle`` (length d/2) holds d/4 frequencies ``base ** -t`` with ``t`` evenly spaced on [0, 1]
  (both ends included), each repeated twice in adjacent positions: (f0, f0, f1, f1, ...).
* Token (r, s) (row r, column s, integer positions from 0, not normalised) gets the phase vector
  ``cat(r * angle, s * angle)`` of length d.
* Channels (2m, 2m + 1) of a head form a pair (a, b) that is rotated by its phase p:
  (a cos p - b sin p, b cos p + a sin p), i.e. ``x * cos + rotate_pairs(x) * sin``.

Positions extend to any grid size without interpolation. Needs torch only.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def rope_angles(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The (head_dim / 2,) frequency vector described in the module docstring (fp32)."""
    if head_dim % 4:
        raise ValueError(f'2-D RoPE needs a head dimension divisible by 4, got {head_dim}')
    frequencies = 1.0 / base ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32)
    return frequencies.repeat_interleave(2)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (-b, a) for every channel pair (2m, 2m + 1) of the last axis."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_pairs(x) * sin`` for ``x`` (..., N, d) and the tables of :class:`RoPE2d` (N, d),
    whose two entries of each channel pair are equal.

    Computed as one complex multiplication per pair, (a + ib)(cos + i sin), which reads ``x`` once. The
    result is fp32 for fp16 / bf16 ``x`` (the official code computes it with fp32 tables, so in fp32);
    scaling both tables scales the result (e.g. by the attention's softmax scale)."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, sin.dtype), torch.float32)
    x = x.to(dtype)
    # view_as_complex needs unit last stride, even other strides and an even storage offset. torch.compile
    # cannot trace storage_offset(): a compiled graph always takes the contiguous copy (the same values).
    if (
        torch.compiler.is_compiling()
        or x.stride(-1) != 1
        or x.storage_offset() % 2
        or any(stride % 2 for stride in x.stride()[:-1])
    ):
        x = x.contiguous()
    turn = torch.complex(cos[..., 0::2].to(dtype), sin[..., 0::2].to(dtype))
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * turn).flatten(-2)


class RoPE2d(nn.Module):
    """The per-head frequency buffer ``angle`` (persistent, so it is part of the state dict) and the sin /
    cos tables of an H x W grid, tokens in row-major order.

    Args:
        head_dim: d, the channels of one attention head (divisible by 4).
        base: the frequency base (10000).
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer('angle', rope_angles(head_dim, base), persistent=True)

    def forward(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (height * width, head_dim), in fp32."""
        angle = self.angle.float()
        rows = torch.arange(height, device=angle.device, dtype=torch.float32)[:, None] * angle
        cols = torch.arange(width, device=angle.device, dtype=torch.float32)[:, None] * angle
        half = angle.numel()
        phase = torch.cat(
            (rows[:, None, :].expand(height, width, half), cols[None, :, :].expand(height, width, half)), dim=-1
        ).reshape(height * width, -1)
        return phase.sin(), phase.cos()

    def extra_repr(self) -> str:
        return f'head_dim={self.head_dim}'
