"""Expedite on mmseg's plain ViT (Liang et al., NeurIPS 2022; spec §1, §4.1): a trained
``mmseg.models.backbones.VisionTransformer`` turned into a high -> low -> high resolution one without
fine-tuning, and the Segmenter-style segmentor that reconstructs the decode head's logits.

* :class:`HourglassVisionTransformer` runs blocks ``0 .. cluster_after`` on the H x W patch tokens as
  upstream, clusters the patch tokens into h x w centres with :class:`TokenClustering` (the class token is
  left out and re-attached in front, spec §2.7), and runs the remaining blocks (and the final norm) on the
  1 + h*w tokens. Outputs taken after the clustering are either reconstructed to the token grid in the
  backbone (``reconstruct='backbone'``: a drop-in replacement for any head) or stay at (h, w)
  (``reconstruct='decode_head'``: the backbone keeps the :class:`TokenClusters` of its last forward in
  :attr:`HourglassVisionTransformer.clusters`, and :class:`HourglassEncoderDecoder` reconstructs the
  logits, as the official Segmenter does). No parameter or buffer is added: upstream checkpoints load
  unchanged.
* :class:`HourglassEncoderDecoder` is mmseg's ``EncoderDecoder`` whose ``encode_decode`` (whole and slide
  inference) and tensor-mode ``_forward`` map the decode head's (h, w) logits back to the token grid with
  the backbone's clusters before they are resized to the image.

This module imports mmseg; ``mmcluster.models.register_mmseg`` registers its classes in mmseg's MODELS.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmseg.models.backbones import VisionTransformer
from mmseg.models.segmentors import EncoderDecoder

from ..layers.token_clustering import FullResolutionSwitch, TokenClustering, TokenClusters, TokenReconstruction

Grid = Tuple[int, int]
RECONSTRUCT = ('backbone', 'decode_head')


def _grid(value: Union[int, Sequence[int]], name: str) -> Grid:
    """An int n or an (h, w) pair (a list from a config too) of positive ints as (h, w)."""
    grid = (value, value) if isinstance(value, int) else tuple(value)
    if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid):
        raise ValueError(f'{name} must be a positive int or a pair (h, w) of positive ints, got {value!r}')
    return grid


class HourglassVisionTransformer(FullResolutionSwitch, VisionTransformer):
    """mmseg's ``VisionTransformer`` with Expedite's token clustering after block ``cluster_after`` and token
    reconstruction in the backbone or after the decode head. Every upstream argument keeps its meaning.

    Args:
        cluster_after: 0-based index of the block after which the patch tokens are clustered (the official
            ``location``; alpha = cluster_after + 1 blocks run at full resolution). At most
            ``num_layers - 2``: at least one block runs on the centres.
        cluster_grid: (h, w) of the centres, or an int for h = w. On an input whose token grid is smaller on
            an axis, that axis uses the token grid (:meth:`cluster_grid_for`); equal to the token grid, the
            model is exactly the upstream one.
        num_iters: kappa, the EM updates of the clustering.
        neighbourhood_size: lambda, odd: each token competes for the lambda x lambda centres around its cell.
        temperature: tau of the clustering (multiplies the squared distance).
        reconstruct: ``'backbone'``: every output taken after the clustering is reconstructed to the token
            grid here; ``'decode_head'``: such outputs stay at (h, w) and the segmentor
            (:class:`HourglassEncoderDecoder`) reconstructs the logits with :attr:`clusters`.
        num_neighbours: k, the nearest centres each token is rebuilt from.
        reconstruction_temperature: tau_r of the reconstruction.
        **kwargs: the arguments of mmseg's ``VisionTransformer``.

    Outputs: as upstream, the maps of the ``out_indices`` blocks (``out_origin``: the embedded tokens first).
    Blocks with index > ``cluster_after`` give (B, C, h, w) maps with ``reconstruct='decode_head'`` and
    (B, C, H, W) ones with ``'backbone'``; ``output_cls_token`` adds the class token, which the later blocks
    refine with the centres, as upstream.

    Hourglass protocol (shared with the Swin wrappers, used by ``tools/analysis_tools/feature_similarity.py``):
    :attr:`clusters` (the :class:`TokenClusters` of the last forward, None without clustering),
    :meth:`hourglass_blocks` (the blocks that run on the centres), :meth:`patch_tokens` (a block's output of
    the last forward as (B, H*W, C) full-resolution patch tokens) and :meth:`full_resolution` (a context in
    which the forward is exactly the upstream backbone's).
    """

    def __init__(
        self,
        cluster_after: int,
        cluster_grid: Union[int, Sequence[int]],
        num_iters: int = 5,
        neighbourhood_size: int = 5,
        temperature: float = 0.02,
        reconstruct: str = 'backbone',
        num_neighbours: int = 20,
        reconstruction_temperature: float = 0.02,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        num_layers = len(self.layers)
        if isinstance(cluster_after, bool) or not isinstance(cluster_after, int):
            raise TypeError(f'cluster_after must be an int, got {cluster_after!r}')
        if not 0 <= cluster_after <= num_layers - 2:
            raise ValueError(
                f'cluster_after must be in [0, num_layers - 2] = [0, {num_layers - 2}] so that at least one block '
                f'runs on the cluster centres, got {cluster_after}'
            )
        if reconstruct not in RECONSTRUCT:
            raise ValueError(f'reconstruct must be one of {RECONSTRUCT}, got {reconstruct!r}')
        self.cluster_after = cluster_after
        self.cluster_grid = _grid(cluster_grid, 'cluster_grid')
        self.reconstruct = reconstruct
        # parameter-free, no buffers: the state dict is the upstream one
        self.token_clustering = TokenClustering(num_iters, neighbourhood_size, temperature)
        self.token_reconstruction = TokenReconstruction(num_neighbours, reconstruction_temperature)
        self.clusters: Optional[TokenClusters] = None

    def hourglass_blocks(self) -> List[Tuple[str, nn.Module]]:
        """(name, block) of every block that runs on the cluster centres (those after ``cluster_after``):
        the blocks alpha + 1 .. L whose outputs Z_{alpha+beta} the paper's Table 1 compares."""
        return [(f'layers.{i}', layer) for i, layer in enumerate(self.layers) if i > self.cluster_after]

    def patch_tokens(self, block_output: torch.Tensor) -> torch.Tensor:
        """The (B, tokens, C) output of one of :meth:`hourglass_blocks` in the last forward as (B, H*W, C)
        patch tokens on the token grid: the class token dropped, and tokens on the cluster grid reconstructed
        with the last forward's :attr:`clusters` (Eqn. 4)."""
        tokens = block_output[:, 1:] if self.with_cls_token else block_output
        clusters = self.clusters
        if clusters is None or tokens.shape[1] != clusters.centres.shape[1]:
            return tokens
        return self.token_reconstruction(tokens, clusters)

    def cluster_grid_for(self, grid: Grid) -> Grid:
        """The cluster grid used for an input with this token grid: ``cluster_grid``, reduced on each axis to
        the token grid where the input is smaller (e.g. a small image in whole-image inference). Equal to the
        token grid, the model is exactly the upstream one (no clustering), so nothing is approximated."""
        return min(self.cluster_grid[0], grid[0]), min(self.cluster_grid[1], grid[1])

    def reconstruct_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) map on the cluster grid of the last forward -> (B, C, H, W) on its token grid, with the
        clusters kept by that forward (``reconstruct='decode_head'``); a map already on the token grid is
        returned as it is."""
        clusters = self.clusters
        if clusters is None:
            raise RuntimeError('no clusters kept: reconstruct_map needs a forward with clustering before it')
        size = tuple(feature_map.shape[-2:])
        if size == clusters.grid:
            return feature_map
        if feature_map.dim() != 4 or size != clusters.cluster_grid:
            raise ValueError(
                f'expected a (B, C, h, w) map on the cluster grid {clusters.cluster_grid} (or the token grid '
                f'{clusters.grid}) of the last forward, got shape {tuple(feature_map.shape)}'
            )
        B, C = feature_map.shape[:2]
        tokens = self.token_reconstruction(feature_map.flatten(2).transpose(1, 2), clusters)
        return tokens.transpose(1, 2).reshape(B, C, *clusters.grid)

    def _output(self, x: torch.Tensor, grid: Grid, clusters: Optional[TokenClusters]):
        """Upstream's per-index output (vit.py, ``VisionTransformer.forward``, the ``if i in self.out_indices``
        branch): class token removed, reshaped to (B, C, *grid), with the class token if asked; tokens taken
        after the clustering are first reconstructed to the token grid when ``reconstruct='backbone'``."""
        out = x[:, 1:] if self.with_cls_token else x
        if clusters is not None and self.reconstruct == 'backbone':
            out, grid = self.token_reconstruction(out, clusters), clusters.grid
        B, _, C = out.shape
        out = out.reshape(B, grid[0], grid[1], C).permute(0, 3, 1, 2).contiguous()
        return [out, x[:, 0]] if self.output_cls_token else out

    def forward(self, inputs: torch.Tensor) -> Tuple:
        # as upstream VisionTransformer.forward (mmseg 1.x vit.py) up to the block loop: embedding, class
        # token, position embedding, class token dropped if unused, pre-norm
        B = inputs.shape[0]
        x, hw_shape = self.patch_embed(inputs)
        grid = tuple(hw_shape)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)

        self.clusters = None
        clusters = None
        outs = [self._output(x, grid, None)] if self.out_origin else []
        # upstream's block loop, plus the clustering after block cluster_after (its own output is taken
        # before, at full resolution: the final norm and the outputs are as upstream)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                outs.append(self._output(x, grid if clusters is None else clusters.cluster_grid, clusters))
            if i == self.cluster_after and not self._full_resolution:
                patches = x[:, 1:] if self.with_cls_token else x
                clusters = self.token_clustering(patches, grid, self.cluster_grid_for(grid))
                x = torch.cat((x[:, :1], clusters.centres), dim=1) if self.with_cls_token else clusters.centres
        self.clusters = clusters
        return tuple(outs)


class HourglassEncoderDecoder(EncoderDecoder):
    """mmseg's ``EncoderDecoder`` that reconstructs the decode head's logits from the cluster grid to the
    token grid (spec §4.1, as the official Segmenter) when the backbone has ``reconstruct='decode_head'``;
    with any other backbone it is the upstream segmentor. Training is upstream's (the loss resizes the
    cluster-grid logits to the labels directly): Expedite is applied to trained models."""

    def _reconstruct_logits(self, seg_logits: torch.Tensor) -> torch.Tensor:
        if getattr(self.backbone, 'reconstruct', None) != 'decode_head':
            return seg_logits
        return self.backbone.reconstruct_map(seg_logits)

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        # upstream encode_decode with decode_head.predict split into its forward and predict_by_feat (the
        # resize to the image or crop), the reconstruction between them; slide inference calls it per crop
        seg_logits = self._reconstruct_logits(self.decode_head.forward(self.extract_feat(inputs)))
        return self.decode_head.predict_by_feat(seg_logits, batch_img_metas)

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        return self._reconstruct_logits(super()._forward(inputs, data_samples))
