"""Band-by-band execution of token-local layers on CPUs, so that their intermediates stay in the cache.

A layer whose output token at row r depends only on input rows r - halo .. r + halo (token-wise layers:
halo 0; a 3x3 convolution with zero padding: halo 1) gives the same result when it runs on horizontal
bands of the token map, each with ``halo`` extra rows of context on either side that are dropped from its
output. At detection resolutions the hidden activations of such a layer are larger than a CPU's last-level
cache (PaCa-ViT's stage-1 FFN at 800x1280: 64,000 tokens x 384 channels, 98 MB in fp32), and each of its
element-wise steps then streams them through memory; on bands of a few MiB they stay in the cache. On the
project's 2-core EPYC machines this runs PaCa-Small's stage-1 FFN 2.3x faster (209 -> 90 ms per block,
``docs/benchmarks.md``). GPUs run whole maps: there the layer runs once.

Most of such a layer is usually row-wise (a PaCa block: attention with global keys, LayerNorms, the FFN's
first linear layer) and only one step needs the neighbouring rows (the FFN's depth-wise conv). Computing the
row-wise part on the halo rows too would redo it on ``2 * halo`` rows of every band: 25% more work on bands
of 8 rows, the height that fits the cache at 1600x2560. With a ``rowwise`` function the row-wise part runs
once per row, and each band borrows its halo rows of the row-wise output from the bands above and below it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

# Hidden activation elements per band: 2**21 fp32 values (8 MiB), which fits the L3 cache with the band's
# inputs and outputs; bands of 4 to 32 rows at PaCa-ViT's widths at 800x1280.
BAND_ELEMENTS = 2**21

Grid = tuple[int, int]
RowwiseFn = Callable[[torch.Tensor, Grid], tuple[torch.Tensor, torch.Tensor]]
LocalFn = Callable[[torch.Tensor, torch.Tensor, Grid, slice], torch.Tensor]


def band_height(x: torch.Tensor, hw: Grid, hidden_dim: int, halo: int = 0) -> Optional[int]:
    """Rows per band for tokens x (B, H*W, C) whose widest intermediate has ``hidden_dim`` channels, or None
    when the map runs whole: off the CPU, or when one band would hold the whole map."""
    rows = max(1, halo, BAND_ELEMENTS // (x.shape[0] * hw[1] * hidden_dim))
    return None if x.device.type != 'cpu' or rows >= hw[0] else rows


def map_row_bands(
    local: LocalFn,
    x: torch.Tensor,
    hw: Grid,
    hidden_dim: int,
    halo: int = 0,
    rowwise: Optional[RowwiseFn] = None,
    tokens_last: bool = False,
) -> torch.Tensor:
    """A token-local layer on tokens x (B, H*W, C) of an H x W grid, run band by band on CPUs.

    The layer is ``local(*rowwise(x))``:

    * ``rowwise(x, hw) -> (kept, context)``: the row-wise part; row r of both outputs depends on input row
      r only. It runs once per row. Without it, ``kept`` and ``context`` are x itself.
    * ``local(kept, context, context_hw, rows) -> out``: the output tokens (B, n, C') of ``kept``'s rows.
      ``context`` (on a ``context_hw`` grid) holds the same rows of the row-wise ``context`` plus up to
      ``halo`` rows above and below them (fewer at the map's borders, where a convolution's zero padding
      stands in for them); ``rows`` is the slice of ``kept``'s rows within ``context``.

    Args:
        local: the local part, see above; its output row r may depend on context rows r - halo .. r + halo.
        x: tokens (B, H*W, C) in row-major order.
        hw: the grid (H, W).
        hidden_dim: the widest intermediate per token (channels), which sets the band height.
        halo: rows of context each output row needs on either side.
        rowwise: the row-wise part, see above.
        tokens_last: return the output as a contiguous (B, C', H*W) tensor instead of (B, H*W, C'), each
            band written into it as it is done (one full-size allocation, not two).
    """
    height, width = hw
    rows = band_height(x, hw, hidden_dim, halo)
    if rows is None:
        kept, context = rowwise(x, hw) if rowwise is not None else (x, x)
        out = local(kept, context, hw, slice(0, height))
        return out.transpose(1, 2).contiguous() if tokens_last else out
    grid = x.unflatten(1, (height, width))
    bands = [(top, min(top + rows, height)) for top in range(0, height, rows)]
    outs = _BandOutputs(height * width, tokens_last)
    if rowwise is None:
        for top, bottom in bands:
            first, last = max(top - halo, 0), min(bottom + halo, height)
            context = grid[:, first:last].flatten(1, 2)
            kept = context[:, (top - first) * width : (bottom - first) * width]
            outs.append(local(kept, context, (last - first, width), slice(top - first, bottom - first)))
        return outs.result()
    # the row-wise outputs of band i + 1, of band i and the last halo rows of band i - 1 are alive at a time
    above: Optional[torch.Tensor] = None
    upcoming = rowwise(grid[:, : bands[0][1]].flatten(1, 2), (bands[0][1], width))
    for i, (top, bottom) in enumerate(bands):
        kept, context = upcoming
        own = context.unflatten(1, (bottom - top, width))
        parts = [own] if above is None else [above, own]
        if i + 1 < len(bands):
            next_top, next_bottom = bands[i + 1]
            upcoming = rowwise(grid[:, next_top:next_bottom].flatten(1, 2), (next_bottom - next_top, width))
            if halo:
                parts.append(upcoming[1].unflatten(1, (next_bottom - next_top, width))[:, :halo])
        band_context = torch.cat(parts, dim=1) if len(parts) > 1 else own
        start = 0 if above is None else above.shape[1]
        context_hw = (band_context.shape[1], width)
        outs.append(local(kept, band_context.flatten(1, 2), context_hw, slice(start, start + bottom - top)))
        above = own[:, -halo:] if halo else None
    return outs.result()


class _BandOutputs:
    """The bands' outputs (B, n, C'), top to bottom: concatenated to (B, N, C') at the end, or written into a
    (B, C', N) tensor as they come (``tokens_last``)."""

    def __init__(self, num_tokens: int, tokens_last: bool) -> None:
        self.num_tokens, self.tokens_last = num_tokens, tokens_last
        self.bands: list[torch.Tensor] = []
        self.out: Optional[torch.Tensor] = None
        self.filled = 0

    def append(self, band: torch.Tensor) -> None:
        if not self.tokens_last:
            self.bands.append(band)
            return
        if self.out is None:
            self.out = band.new_empty(band.shape[0], band.shape[2], self.num_tokens)
        self.out[:, :, self.filled : self.filled + band.shape[1]] = band.transpose(1, 2)
        self.filled += band.shape[1]

    def result(self) -> torch.Tensor:
        return self.out if self.tokens_last else torch.cat(self.bands, dim=1)
