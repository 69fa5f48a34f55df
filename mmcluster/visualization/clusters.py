"""Cluster-assignment heatmaps (PaCa-ViT paper Sec. 3.3, Figs. 6, 9, 10).

The assignment logits C_{N,M} of a clustering layer, taken before the softmax and passed through a
sigmoid, are reshaped to M spatial heatmaps H^m. The mean-threshold mask of Eqn. 7 keeps the positions
whose score exceeds the heatmap's mean.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def save_heatmap_grid(image: np.ndarray, layer_logits: Mapping[str, torch.Tensor], out_file: str | Path,
                      num_clusters: int = 6, title: Optional[str] = None,
                      cluster_names: Optional[Mapping[str, Sequence[str]]] = None) -> Path:
    """One row per clustering layer: the image, then the ``num_clusters`` most selective heatmaps over it.

    Args:
        image: RGB uint8 (H, W, 3), the network input before normalisation.
        layer_logits: layer name -> assignment logits (M, h, w) for this image.
        cluster_names: optional names of a layer's clusters (e.g. class names for the PaCa head).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

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
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file
