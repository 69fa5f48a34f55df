"""Feed-forward networks on (B, N, C) token sequences laid out on an H x W grid."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from .row_bands import OneDNNLinear, conv_rows, map_row_bands


class DWConvFFN(nn.Module):
    """Inverted-bottleneck FFN with a residual depth-wise 3x3 conv on the hidden tokens.

    ``fc1 -> h + DWConv3x3(h) -> GELU -> fc2``; this is PaCa-ViT's "MBlock" (paper Fig. 3), the
    PVTv2-style FFN with a shortcut around the depth-wise conv. The FFN is local (each output token sees its
    3x3 neighbourhood), so on CPUs it runs band by band with one row of halo
    (:func:`~.row_bands.map_row_bands`); the result is the same.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = OneDNNLinear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = OneDNNLinear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        expand = lambda tokens, _: (tokens, self.fc1(tokens))  # noqa: E731  (once per row)
        return map_row_bands(
            lambda _, hidden, band, rows: self.mix(hidden, band, rows), x, hw, self.fc1.out_features, 1, expand
        )

    def forward_map(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The FFN on a whole (B, H*W, C) token map."""
        return self.mix(self.fc1(x), hw, slice(0, hw[0]))

    def identity_kernel(self) -> torch.Tensor:
        """The depth-wise kernels of the identity map: 1 at the centre."""
        kernel = self.dwconv.weight.new_zeros(self.dwconv.weight.shape)
        kernel[:, :, 1, 1] = 1.0
        return kernel

    def mix(self, hidden: torch.Tensor, hw: tuple[int, int], rows: slice) -> torch.Tensor:
        """``fc2(GELU(h + DWConv3x3(h)))`` of the hidden tokens h (B, H*W, hidden) of an H x W map, for the
        tokens in ``rows`` only (the rows around them are the depth-wise conv's context)."""
        # a channels-last view of the tokens: the depth-wise conv reads and writes (B, H, W, C) memory
        spatial = rearrange(hidden, 'b (h w) c -> b c h w', h=hw[0], w=hw[1])
        if hidden.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type):
            # h + DWConv(h) is the conv with 1 added to its kernels' centres: one pass over the hidden map
            # instead of two (same function; the sums are rounded in another order). Not in lower precision,
            # where the centre weight + 1 would be rounded to fewer bits of the weight.
            weight = self.dwconv.weight + self.identity_kernel()
            mixed = conv_rows(self.dwconv, spatial, rows, weight, self.act)  # the GELU fused on CPUs
        else:
            mixed = self.act(spatial[:, :, rows] + conv_rows(self.dwconv, spatial, rows))
        return self.fc2(rearrange(mixed, 'b c h w -> b (h w) c'))
