from .clusters import heatmaps, mean_threshold_masks, most_selective, save_heatmap_grid, upsample_masks

__all__ = ['heatmaps', 'mean_threshold_masks', 'most_selective', 'save_heatmap_grid', 'upsample_masks']
