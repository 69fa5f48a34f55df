"""Sec. 3.3: heatmaps, mean-threshold masks (Eqn. 7), masked re-classification (Eqn. 8), and the figures."""

import numpy as np
import torch

from mmcluster.visualization import (
    heatmaps,
    masked_reclassification,
    mean_threshold_masks,
    save_all_clusters,
    save_group_figure,
    upsample_masks,
)
from tests.tools_helpers import run


def test_mean_threshold_masks_follow_eqn_7():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, -5.0]]])
    maps = heatmaps(logits)
    assert torch.allclose(maps, torch.sigmoid(logits))
    masks = mean_threshold_masks(maps)
    assert masks.tolist() == [[[False, False], [True, True]], [[True, True], [True, False]]]
    assert upsample_masks(masks, (4, 4))[0].tolist() == [[False] * 4] * 2 + [[True] * 4] * 2  # nearest


class TopHalfClassifier(torch.nn.Module):
    """Class 1 when the top half of the image is bright, class 0 otherwise."""

    def forward(self, x):
        top = x[:, :, : x.shape[2] // 2].mean(dim=(1, 2, 3))
        return torch.stack([0.5 - top, top - 0.5], dim=1) * 20


def test_masked_reclassification_sorts_clusters_into_groups():
    image = torch.ones(3, 8, 8)
    logits = torch.full((3, 2, 2), -4.0)
    logits[0, 0, :] = 4.0  # cluster 0 covers the top half: its masked image keeps class 1
    logits[1, 1, :] = 4.0  # cluster 1 covers the bottom half: the masked image loses it
    logits[2] = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])  # a diagonal: half the top survives
    result = masked_reclassification(TopHalfClassifier(), image, logits, label=1, normalize=lambda x: x, batch_size=2)
    assert result['masks'].shape == (3, 8, 8)
    assert result['positive'].tolist() == [True, False, False]
    assert result['pred'].tolist() == [1, 0, 0]
    assert result['prob'][0] > 0.99 and result['prob'][1] < 0.01


def test_figures_are_written(tmp_path):
    image = (np.random.RandomState(0).rand(8, 8, 3) * 255).astype(np.uint8)
    logits = torch.randn(4, 2, 2)
    result = masked_reclassification(TopHalfClassifier(), torch.ones(3, 8, 8), logits, 1, lambda x: x)
    out = save_group_figure(
        image, {'stages.0.blocks.0.attn.clustering': (logits, result)}, tmp_path / 'g.png', 'class 1', 0.9, top_k=2
    )
    assert out.stat().st_size > 5000
    from PIL import Image

    grid = Image.open(save_all_clusters(image, logits, tmp_path / 'a.png', columns=2))
    assert grid.size == (round(1.3 * 2 * 90), round(1.4 * 2 * 90))  # 2 x 2 panels for 4 clusters


def test_classifier_mode_of_the_tool(tmp_path):
    from PIL import Image

    Image.fromarray((np.random.RandomState(1).rand(90, 120, 3) * 255).astype(np.uint8)).save(tmp_path / 'x.jpg')
    out = run(
        [
            'tools/analysis_tools/visualize_clusters.py',
            'timm:paca_tiny',
            tmp_path / 'x.jpg',
            '--out-dir',
            tmp_path / 'vis',
            '--label',
            '3',
            '--top-k',
            '2',
            '--input-size',
            '96',
            '128',
        ],
        env={'OMP_NUM_THREADS': '1'},
    )
    assert '(input 96x128, label tiger shark, Galeocerdo cuvieri)' in out  # ImageNet class 3, by timm's names
    for stage in range(3):
        assert f'stages.{stage}.blocks.0.attn.clustering: ' in out and '/ 100 clusters' in out
    assert (tmp_path / 'vis' / 'x_groups.png').is_file() and (tmp_path / 'vis' / 'x_clusters.png').is_file()
