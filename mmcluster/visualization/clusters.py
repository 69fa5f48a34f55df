"""Cluster-assignment heatmaps (PaCa-ViT paper Sec. 3.3, Figs. 6, 9, 10).

The assignment logits C_{N,M} of a clustering layer, taken before the softmax and passed through a
sigmoid, are reshaped to M spatial heatmaps H^m. The mean-threshold mask of Eqn. 7 keeps the positions
whose score exceeds the heatmap's mean. The maps come from any model that implements the cluster-map
protocol of ``mmcluster/models/backbones/base.py`` (``cluster_maps(x) -> {name: (B, M, h, w)}``), through
:func:`image_cluster_maps`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class NoClusterMapsError(TypeError):
    """A model that does not implement the cluster-map protocol (it has no clustering layers to show)."""


def image_cluster_maps(
    model: torch.nn.Module, images: torch.Tensor, index: int = 0
) -> 'OrderedDict[str, torch.Tensor]':
    """Layer name -> the (M, h, w) map of image ``index`` of every clustering layer of ``model`` (a backbone or
    classifier implementing the cluster-map protocol), for the batch ``images`` (B, 3, H, W).

    Raises:
        NoClusterMapsError: ``model`` does not implement the protocol (no ``cluster_maps``, or it raises
            ``NotImplementedError``).
        ValueError: it returned no map, or a map that is not (B, M, h, w).
    """
    method = getattr(model, 'cluster_maps', None)
    if not callable(method):
        raise NoClusterMapsError(
            f'{type(model).__name__} does not implement the cluster-map protocol (cluster_maps): '
            f'it has no clustering layers to visualise'
        )
    try:
        with torch.no_grad():
            maps = method(images)
    except NotImplementedError:
        raise NoClusterMapsError(
            f'{type(model).__name__} does not implement cluster_maps: it has no clustering layers to visualise'
        ) from None
    if not maps:
        raise ValueError(f'{type(model).__name__}.cluster_maps returned no clustering layer')
    out = OrderedDict()
    for name, value in maps.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[0] != images.shape[0]:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f'{type(model).__name__}.cluster_maps: {name!r} must be a (B, M, h, w) tensor with '
                f'B = {images.shape[0]}, got {shape}'
            )
        out[name] = value[index]
    return out


def heatmaps(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of assignment logits (M, h, w) -> heatmaps H^m in [0, 1] (Sec. 3.3)."""
    return torch.sigmoid(logits.float())


def mean_threshold_masks(maps: torch.Tensor) -> torch.Tensor:
    """Eqn. 7: M^m = H^m > mean(H^m), per cluster; maps (M, h, w) -> bool (M, h, w)."""
    return maps > maps.flatten(1).mean(dim=1)[:, None, None]


def upsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of (M, h, w) masks to the image size, as in Sec. 3.3."""
    return F.interpolate(masks[:, None].float(), size=size, mode='nearest')[:, 0] > 0.5


def most_selective(maps: torch.Tensor, k: int) -> list[int]:
    """Indices of the k heatmaps with the largest spatial standard deviation (the least uniform clusters)."""
    std = maps.flatten(1).std(dim=1)
    return std.argsort(descending=True)[:k].tolist()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a [0, 1] heatmap (h, w), resized to the image, onto an RGB uint8 image with the jet colormap."""
    from matplotlib import colormaps
    from PIL import Image

    hm = np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.BILINEAR))
    colored = colormaps['jet'](hm / 255.0)[..., :3] * 255
    return (alpha * colored + (1 - alpha) * image).clip(0, 255).astype(np.uint8)


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (the figures are only written to files)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_file: str | Path, title: Optional[str] = None, dpi: int = 100) -> Path:
    """Title, lay out, write (creating the folder) and close a figure."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=dpi)
    _pyplot().close(fig)
    return out_file


def save_heatmap_grid(
    image: np.ndarray,
    layer_logits: Mapping[str, torch.Tensor],
    out_file: str | Path,
    num_clusters: int = 6,
    title: Optional[str] = None,
    cluster_names: Optional[Mapping[str, Sequence[str]]] = None,
) -> Path:
    """One row per clustering layer: the image, then the ``num_clusters`` most selective heatmaps over it.

    Args:
        image: RGB uint8 (H, W, 3), the network input before normalisation.
        layer_logits: layer name -> assignment logits (M, h, w) for this image.
        cluster_names: optional names of a layer's clusters (e.g. class names for the PaCa head).
    """
    plt = _pyplot()
    rows = len(layer_logits)
    if rows == 0:
        raise ValueError('no clustering layer outputs to draw')
    cols = num_clusters + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), squeeze=False)
    for row, (name, logits) in enumerate(layer_logits.items()):
        maps = heatmaps(logits)
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(name.replace('.attn.clustering', '').replace('stages.', 'stage '), fontsize=7)
        chosen = most_selective(maps, min(num_clusters, maps.shape[0]))
        for col in range(1, cols):
            axis = axes[row, col]
            if col - 1 < len(chosen):
                m = chosen[col - 1]
                axis.imshow(overlay(image, maps[m].cpu().numpy()))
                label = cluster_names[name][m] if cluster_names and name in cluster_names else f'cluster {m}'
                axis.set_title(label, fontsize=7)
        for axis in axes[row]:
            axis.axis('off')
    return save_figure(fig, out_file, title, dpi=100)


@torch.no_grad()
def masked_reclassification(
    classifier: torch.nn.Module, image: torch.Tensor, logits: torch.Tensor, label: int, normalize, batch_size: int = 50
) -> dict:
    """Sec. 3.3 for one clustering layer: mask the image with each cluster's mean-threshold mask (Eqns. 7, 8)
    and classify every masked image again.

    Args:
        image: the unnormalised input (3, H, W) in [0, 1]; masked-out pixels become 0 (black).
        logits: this layer's assignment logits (M, h, w) for the image.
        label: the class whose probability ranks the clusters (the ground truth, or the prediction).
        normalize: maps (B, 3, H, W) images in [0, 1] to the classifier's input.

    Returns a dict of tensors over the M clusters: ``masks`` (M, H, W) bool, ``prob`` (probability of
    ``label``), ``pred`` (predicted class), and ``positive`` (bool: the masked image is still classified as
    ``label``; the paper's positive group).
    """
    masks = upsample_masks(mean_threshold_masks(heatmaps(logits)), tuple(image.shape[-2:]))
    probs, preds = [], []
    for start in range(0, masks.shape[0], batch_size):
        chunk = masks[start : start + batch_size]
        masked = image[None] * chunk[:, None].to(image.dtype)  # Eqn. 8
        out = classifier(normalize(masked)).softmax(dim=-1)
        probs.append(out[:, label])
        preds.append(out.argmax(dim=-1))
    prob, pred = torch.cat(probs), torch.cat(preds)
    return dict(masks=masks, prob=prob, pred=pred, positive=pred == label)


def save_group_figure(
    image: np.ndarray,
    layers: Mapping[str, tuple[torch.Tensor, dict]],
    out_file: str | Path,
    label_name: str,
    base_prob: float,
    top_k: int = 3,
    class_names: Optional[Sequence[str]] = None,
) -> Path:
    """Fig. 6 of the paper: per clustering layer, the top-k clusters of the positive group and of the negative
    group (ranked by the probability of the label), each as its heatmap and its masked image."""
    plt = _pyplot()
    cols = 1 + 2 * top_k
    fig, axes = plt.subplots(2 * len(layers), cols, figsize=(1.9 * cols, 3.9 * len(layers)), squeeze=False)
    for row, (name, (logits, result)) in enumerate(layers.items()):
        maps = heatmaps(logits)
        order = result['prob'].argsort(descending=True)
        positive = [int(m) for m in order if result['positive'][m]][:top_k]
        negative = [int(m) for m in order if not result['positive'][m]][:top_k]
        top, bottom = axes[2 * row], axes[2 * row + 1]
        top[0].imshow(image)
        top[0].set_title(f'{name.replace(".attn.clustering", "")}\n{label_name[:24]}: p={base_prob:.2f}', fontsize=7)
        bottom[0].text(
            0.0,
            0.5,
            f'positive: {int(result["positive"].sum())}\nnegative: '
            f'{int((~result["positive"]).sum())}\nof {len(result["positive"])} clusters',
            fontsize=8,
        )
        slots = [(1 + i, '+', m) for i, m in enumerate(positive)] + [
            (1 + top_k + i, '-', m) for i, m in enumerate(negative)
        ]
        for col, group, m in slots:
            top[col].imshow(overlay(image, maps[m].cpu().numpy()))
            top[col].set_title(f'{group} cluster {m}', fontsize=7)
            masked = image * result['masks'][m].cpu().numpy()[..., None]
            bottom[col].imshow(masked.astype(np.uint8))
            pred = int(result['pred'][m])
            pred_name = class_names[pred] if class_names else str(pred)
            bottom[col].set_title(f'p={float(result["prob"][m]):.2f} ({pred_name[:14]})', fontsize=7)
        for axis in list(top) + list(bottom):
            axis.axis('off')
    return save_figure(fig, out_file, dpi=100)


def save_all_clusters(
    image: np.ndarray, logits: torch.Tensor, out_file: str | Path, columns: int = 10, title: Optional[str] = None
) -> Path:
    """Figs. 9 and 10 of the paper: every cluster's heatmap of one clustering layer, in a grid."""
    plt = _pyplot()
    maps = heatmaps(logits)
    rows = -(-maps.shape[0] // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.4 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis('off')
        if index < maps.shape[0]:
            axis.imshow(overlay(image, maps[index].cpu().numpy()))
            axis.set_title(str(index), fontsize=6)
    return save_figure(fig, out_file, title, dpi=90)
