"""Feed-forward networks on (B, N, C) token sequences laid out on an H x W grid."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from .row_bands import map_row_bands


class DWConvFFN(nn.Module):
    """Inverted-bottleneck FFN with a residual depth-wise 3x3 conv on the hidden tokens.

    ``fc1 -> h + DWConv3x3(h) -> GELU -> fc2``; this is PaCa-ViT's "MBlock" (paper Fig. 3), the
    PVTv2-style FFN with a shortcut around the depth-wise conv. The FFN is local (each output token sees its
    3x3 neighbourhood), so on CPUs it runs band by band with one row of halo
    (:func:`~.row_bands.map_row_bands`); the result is the same.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        expand = lambda tokens, _: (tokens, self.fc1(tokens))  # noqa: E731  (row-wise: once per row)
        return map_row_bands(
            lambda _, hidden, band, rows: self.mix(hidden, band, rows), x, hw, self.fc1.out_features, 1, expand
        )

    def forward_map(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The FFN on a whole (B, H*W, C) token map."""
        return self.mix(self.fc1(x), hw, slice(0, hw[0]))

    def mix(self, hidden: torch.Tensor, hw: tuple[int, int], rows: slice) -> torch.Tensor:
        """``fc2(GELU(h + DWConv3x3(h)))`` of the hidden tokens h (B, H*W, hidden) of an H x W map, for the
        tokens in ``rows`` only (the rows around them are the depth-wise conv's context)."""
        # a channels-last view of the tokens: the depth-wise conv reads and writes (B, H, W, C) memory
        spatial = rearrange(hidden, 'b (h w) c -> b c h w', h=hw[0], w=hw[1])
        mixed = spatial[:, :, rows] + self.dwconv(spatial)[:, :, rows]
        return self.fc2(self.act(rearrange(mixed, 'b c h w -> b (h w) c')))
