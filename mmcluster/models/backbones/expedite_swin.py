"""Expedite on OpenMMLab's Swin Transformer (Liang et al., NeurIPS 2022, Sec. 3.3 "Window token clustering
and reconstruction", Fig. 3; spec §5): a trained mmdet or mmseg ``SwinTransformer`` turned into a
high -> low -> high resolution one without fine-tuning.

In the stage that holds block ``cluster_after`` (a global, 0-based block index over all stages; alpha =
``cluster_after + 1`` blocks run at full resolution, the official ``CLUSTERING_LOCATION`` is alpha):

1. After that block the (H, W) map is zero-padded at the right and bottom to multiples of the window K and
   cut into K x K windows; each window is clustered on its own into k x k centres with
   :class:`~mmcluster.models.layers.TokenClustering` (window token clustering; the padded zero tokens take
   part, as in the official code, spec §5.1), and the windows of centres are stitched into a
   (Hp / K * k, Wp / K * k) map.
2. The stage's later blocks run on that map with k x k windows, shifted by k // 2 where upstream shifts
   (odd blocks of a stage), with the shifted-window mask rebuilt for the new map by upstream's own
   ``ShiftWindowMSA`` (which builds it on every call). Their relative-position-bias tables keep the
   checkpoint's (2K - 1)^2 shape; :class:`ResizableWindowAttention` resizes them bilinearly to (2k - 1)^2
   when it sees k x k windows (spec §5.3: align_corners False, so the zero offset maps to the centre).
3. At the end of the stage, before patch merging, every window of k x k refined tokens is rebuilt into its
   K x K tokens with :class:`~mmcluster.models.layers.TokenReconstruction` (the k nearest among the window's
   centres, spec §5.4), the windows are put back and the padding is cropped: the stage's output (and the
   next stage's input) is at full resolution again.

Nothing else changes: patch embedding, merging, the other stages and the output norms are upstream's, and
so are ``out_indices``, ``frozen_stages``, ``norm_eval`` (mmseg), ``with_cp`` and ``init_cfg``. No parameter
or buffer is added or reshaped, so upstream checkpoints (mmdet's Mask2Former, mmseg's UperNet) load
unchanged. With ``cluster_window`` equal to the window, or on an input whose stage map would not shrink
(the stitched map would hold at least as many tokens as the map itself, e.g. a map smaller than one
window), the stage runs exactly as upstream.

The concrete backbones are ``HourglassSwinTransformer`` in mmdet's MODELS
(:mod:`mmcluster.models.register_mmdet`, on mmdet's ``SwinTransformer``) and in mmseg's
(:mod:`mmcluster.models.register_mmseg`, on mmseg's): the names do not clash with either package's
``SwinTransformer``. This module needs torch, einops and mmengine only.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from mmengine.model import BaseModule
from timm.layers import trunc_normal_

from ..layers.token_clustering import FullResolutionSwitch, TokenClustering, TokenClusters, TokenReconstruction

Grid = Tuple[int, int]


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) index into a (2 * window - 1)^2 relative-position table: the pair (i, j) of
    row-major window positions reads the entry of the offset (y_i - y_j, x_i - x_j), stored row-major
    from (-(window - 1), -(window - 1)). The same table as OpenMMLab's ``WindowMSA`` builds."""
    y, x = torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
    dy = y.flatten()[:, None] - y.flatten()[None, :]
    dx = x.flatten()[:, None] - x.flatten()[None, :]
    return (dy + window - 1) * (2 * window - 1) + (dx + window - 1)


class ResizableWindowAttention(BaseModule):
    """OpenMMLab's ``WindowMSA`` (the same parameters and buffers, taken over from one) for square windows of
    the checkpoint's size K or smaller: on k x k windows the (2K - 1)^2 relative-position-bias table is
    resized bilinearly to (2k - 1)^2 (spec §5.3) and read with the k x k index. Attention is torch's fused
    ``scaled_dot_product_attention`` with the bias (and the shifted-window mask) as its additive mask."""

    def __init__(self, window_msa: nn.Module) -> None:
        super().__init__()
        self.embed_dims = window_msa.embed_dims
        self.window_size = tuple(window_msa.window_size)
        if self.window_size[0] != self.window_size[1]:
            raise ValueError(f'ResizableWindowAttention needs square windows, got {self.window_size}')
        self.num_heads = window_msa.num_heads
        self.scale = window_msa.scale
        self.relative_position_bias_table = window_msa.relative_position_bias_table
        self.register_buffer('relative_position_index', window_msa.relative_position_index)
        self.qkv = window_msa.qkv
        self.attn_drop = window_msa.attn_drop
        self.proj = window_msa.proj
        self.proj_drop = window_msa.proj_drop
        self._indices: dict = {}

    def init_weights(self) -> None:
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, window: int) -> torch.Tensor:
        """(num_heads, window^2, window^2) bias of k x k windows from the K x K table."""
        size = self.window_size[0]
        table = self.relative_position_bias_table
        if window == size:
            index = self.relative_position_index
        else:
            span = 2 * size - 1
            grid = table.t().reshape(1, self.num_heads, span, span)
            table = F.interpolate(grid, size=(2 * window - 1,) * 2, mode='bilinear', align_corners=False)
            table = table.reshape(self.num_heads, -1).t()
            # compiled, the index is a constant of the graph: filling the cache would make the next call recompile
            if torch.compiler.is_compiling():
                index = relative_position_index(window).to(table.device)
            else:
                index = self._indices.get(window)
                if index is None or index.device != table.device:
                    index = self._indices[window] = relative_position_index(window).to(table.device)
        return table[index.reshape(-1)].reshape(window * window, window * window, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (num_windows * B, k * k, C) and ``mask`` (num_windows, k * k, k * k) of values in (-inf, 0]
        or None, as upstream ``WindowMSA.forward``."""
        B, N, C = x.shape
        window = math.isqrt(N)
        if window * window != N or window > self.window_size[0]:
            raise ValueError(f'expected square windows of at most {self.window_size} tokens, got {N} tokens')
        q, k, v = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=self.num_heads)
        bias = self.relative_position_bias(window).to(q.dtype)  # (heads, N, N)
        if mask is not None:  # (nW, N, N), one per window of each image: the batch is (B / nW, nW)
            nW = mask.shape[0]
            bias = bias + mask.to(q.dtype).unsqueeze(1)
            bias = bias.unsqueeze(0).expand(B // nW, -1, -1, -1, -1).reshape(B, self.num_heads, N, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class WindowClusters(NamedTuple):
    """What a forward's window clustering keeps for the reconstruction.

    Attributes:
        clusters: the :class:`TokenClusters` of all windows, a batch of (B * windows) K x K windows.
        grid: (H, W) of the stage's map.
        padded_grid: (Hp, Wp), multiples of the window K.
        reduced_grid: (Hp / K * k, Wp / K * k) of the stitched centres.
    """

    clusters: TokenClusters
    grid: Grid
    padded_grid: Grid
    reduced_grid: Grid


class HourglassSwinMixin(FullResolutionSwitch):
    """Mixed in before an OpenMMLab ``SwinTransformer`` (mmdet's or mmseg's): window token clustering after
    block ``cluster_after`` and window token reconstruction at the end of its stage (module docstring).

    Args:
        cluster_after: global 0-based index of the block after which each window is clustered (alpha =
            cluster_after + 1 blocks at full resolution; the official ``CLUSTERING_LOCATION`` is alpha). At
            least one block of the same stage must follow it.
        cluster_window: k, the side of each window's k x k centres (Mask2Former Swin-L: 12 -> 8); at most
            the window size K (equal: the upstream model).
        num_iters: kappa, the EM updates of the clustering.
        neighbourhood_size: lambda, odd: each token competes for the lambda x lambda centres around its cell.
        temperature: tau of the clustering (multiplies the squared distance).
        num_neighbours: k of the reconstruction's k-NN over the window's centres.
        reconstruction_temperature: tau_r of the reconstruction.
        **kwargs: the arguments of the upstream ``SwinTransformer``.

    The defaults of kappa, lambda, tau, k and tau_r are the official Mask2Former code's (spec §9: 5, 7, 0.05,
    10, 0.05, its COCO panoptic setting). Hourglass protocol (as :class:`HourglassVisionTransformer`):
    :attr:`clusters`, :meth:`hourglass_blocks`, :meth:`patch_tokens`, :meth:`full_resolution`.
    """

    def __init__(
        self,
        cluster_after: int,
        cluster_window: int,
        num_iters: int = 5,
        neighbourhood_size: int = 7,
        temperature: float = 0.05,
        num_neighbours: int = 10,
        reconstruction_temperature: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        depths = [len(stage.blocks) for stage in self.stages]
        if isinstance(cluster_after, bool) or not isinstance(cluster_after, int):
            raise TypeError(f'{name}: cluster_after must be an int, got {cluster_after!r}')
        starts = [sum(depths[:i]) for i in range(len(depths))]
        allowed = [s + j for s, d in zip(starts, depths) for j in range(d - 1)]
        if cluster_after not in allowed:
            raise ValueError(
                f'{name}: cluster_after must be a block index that is not the last of its stage (depths '
                f'{tuple(depths)}: one of {allowed}), so that blocks of the same stage run on the centres; '
                f'got {cluster_after!r}'
            )
        self.hourglass_stage = max(i for i, s in enumerate(starts) if s <= cluster_after)
        self.cluster_block = cluster_after - starts[self.hourglass_stage]
        stage = self.stages[self.hourglass_stage]
        self.window_size = stage.blocks[0].attn.window_size
        if isinstance(cluster_window, bool) or not isinstance(cluster_window, int):
            raise TypeError(f'{name}: cluster_window must be an int, got {cluster_window!r}')
        if not 1 <= cluster_window <= self.window_size:
            raise ValueError(
                f'{name}: cluster_window must be in [1, window_size = {self.window_size}], got {cluster_window}'
            )
        self.cluster_after = cluster_after
        self.cluster_window = cluster_window
        # parameter-free: the state dict is the upstream one
        self.token_clustering = TokenClustering(num_iters, neighbourhood_size, temperature)
        self.token_reconstruction = TokenReconstruction(num_neighbours, reconstruction_temperature)
        self.clusters: Optional[WindowClusters] = None
        # which hourglass blocks upstream shifts, kept from construction: their shift_size changes with the
        # windows (and is 0 for 1 x 1 windows)
        self._shifted = tuple(block.attn.shift_size > 0 for _, block in self.hourglass_blocks())
        if cluster_window < self.window_size:
            for _, block in self.hourglass_blocks():
                block.attn.w_msa = ResizableWindowAttention(block.attn.w_msa)

    def _set_windows(self, window: int) -> None:
        """Windows of ``window`` tokens in the blocks after the clustering, shifted by half where upstream
        shifts (upstream ``ShiftWindowMSA`` pads, rolls and builds its mask from these two ints). Set by each
        forward before the stage runs and left so: a ``with_cp`` recomputation in the backward pass, which
        comes before the next forward, sees the windows its forward used."""
        for (_, block), shifted in zip(self.hourglass_blocks(), self._shifted):
            block.attn.window_size = window
            block.attn.shift_size = window // 2 if shifted else 0

    def hourglass_blocks(self) -> List[Tuple[str, nn.Module]]:
        """(name, block) of every block that runs on the centres: the blocks of the hourglass stage after
        ``cluster_after``."""
        stage = self.hourglass_stage
        blocks = self.stages[stage].blocks
        return [(f'stages.{stage}.blocks.{j}', blocks[j]) for j in range(self.cluster_block + 1, len(blocks))]

    def train(self, mode: bool = True):
        """The upstream ``train`` (which re-applies ``frozen_stages``), returning the module as torch's does
        (OpenMMLab's Swin returns None, so ``model.eval()`` could not be chained)."""
        super().train(mode)
        return self

    def _clustered_size(self, grid: Grid) -> Tuple[Grid, Grid]:
        window, k = self.window_size, self.cluster_window
        padded = (-(-grid[0] // window) * window, -(-grid[1] // window) * window)
        return padded, (padded[0] // window * k, padded[1] // window * k)

    def cluster_windows(self, x: torch.Tensor, grid: Grid) -> Tuple[torch.Tensor, WindowClusters]:
        """Window token clustering: (B, H * W, C) tokens on ``grid`` to (B, h' * w', C) stitched centres."""
        window, k = self.window_size, self.cluster_window
        (Hp, Wp), reduced = self._clustered_size(grid)
        x = x.view(x.shape[0], *grid, x.shape[-1])
        x = F.pad(x, (0, 0, 0, Wp - grid[1], 0, Hp - grid[0]))
        windows = rearrange(x, 'b (nh y) (nw x) c -> (b nh nw) (y x) c', y=window, x=window)
        clusters = self.token_clustering(windows, (window, window), (k, k))
        centres = rearrange(
            clusters.centres, '(b nh nw) (y x) c -> b (nh y nw x) c', nh=Hp // window, nw=Wp // window, y=k
        )
        return centres, WindowClusters(clusters, tuple(grid), (Hp, Wp), reduced)

    def reconstruct_windows(self, x: torch.Tensor, window_clusters: WindowClusters) -> torch.Tensor:
        """Window token reconstruction: (B, h' * w', C) refined tokens on the stitched grid to (B, H * W, C)
        on the stage's grid (k-NN within each window's centres; the padding cropped)."""
        window, k = self.window_size, self.cluster_window
        (Hp, Wp), (H, W) = window_clusters.padded_grid, window_clusters.grid
        nh, nw = Hp // window, Wp // window
        windows = rearrange(x, 'b (nh y nw x) c -> (b nh nw) (y x) c', nh=nh, nw=nw, y=k, x=k)
        tokens = self.token_reconstruction(windows, window_clusters.clusters)
        tokens = rearrange(tokens, '(b nh nw) (y x) c -> b (nh y) (nw x) c', nh=nh, nw=nw, y=window)
        return tokens[:, :H, :W].reshape(x.shape[0], H * W, -1)

    def patch_tokens(self, block_output: torch.Tensor) -> torch.Tensor:
        """The (B, tokens, C) output of one of :meth:`hourglass_blocks` in the last forward as (B, H * W, C)
        tokens on the stage's grid: reconstructed from the stitched centres when the forward clustered."""
        if self.clusters is None:
            return block_output
        return self.reconstruct_windows(block_output, self.clusters)

    def _hourglass_stage(self, stage: nn.Module, x: torch.Tensor, grid: Grid):
        """The hourglass stage: ``SwinBlockSequence.forward`` of mmdet / mmseg with the clustering after
        block ``cluster_block`` and the reconstruction before the patch merging."""
        for block in stage.blocks[: self.cluster_block + 1]:
            x = block(x, grid)
        x, clusters = self.cluster_windows(x, grid)
        for block in stage.blocks[self.cluster_block + 1 :]:
            x = block(x, clusters.reduced_grid)
        x = self.reconstruct_windows(x, clusters)
        self.clusters = clusters
        if stage.downsample:
            x_down, down_grid = stage.downsample(x, grid)
            return x_down, down_grid, x, grid
        return x, grid, x, grid

    def _clusters_this_input(self, grid: Grid) -> bool:
        if self._full_resolution:
            return False
        _, reduced = self._clustered_size(grid)
        return reduced[0] * reduced[1] < grid[0] * grid[1]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        # upstream SwinTransformer.forward (mmdet 3.x and mmseg 1.x swin.py, the same code), with the
        # hourglass stage in place of its SwinBlockSequence.forward
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)
        self.clusters = None
        clustered = False
        outs = []
        for i, stage in enumerate(self.stages):
            if i == self.hourglass_stage and self.cluster_window < self.window_size:
                clustered = self._clusters_this_input(tuple(hw_shape))
                self._set_windows(self.cluster_window if clustered else self.window_size)
            if i == self.hourglass_stage and clustered:
                x, hw_shape, out, out_hw_shape = self._hourglass_stage(stage, x, tuple(hw_shape))
            else:
                x, hw_shape, out, out_hw_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(out.view(-1, *out_hw_shape, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        return outs
