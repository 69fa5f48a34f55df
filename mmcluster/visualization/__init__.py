from .clusters import (
    NoClusterMapsError,
    heatmaps,
    image_cluster_maps,
    masked_reclassification,
    mean_threshold_masks,
    most_selective,
    save_all_clusters,
    save_figure,
    save_group_figure,
    save_heatmap_grid,
    upsample_masks,
)

__all__ = [
    'NoClusterMapsError',
    'heatmaps',
    'image_cluster_maps',
    'masked_reclassification',
    'mean_threshold_masks',
    'most_selective',
    'save_all_clusters',
    'save_figure',
    'save_group_figure',
    'save_heatmap_grid',
    'upsample_masks',
]
