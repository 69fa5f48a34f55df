"""Sec. 3.3: heatmaps, mean-threshold masks (Eqn. 7), masked re-classification (Eqn. 8), and the figures."""

import math

import numpy as np
import pytest
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


# SecViT (Semantic Equitable Clustering): hard, equal-sized clusters; the tool's cluster-id view (the SecViT
# paper's Fig. 4) on the bundled shapes data (the demo's data, tools/run_demo.sh), random weights.


def _secvit_maps(shapes_root, input_size=None, **kwargs):
    """SecViT-T's ``cluster_maps`` of a demo image after timm's eval transform (224x224 unless
    ``input_size``), and the classifier."""
    import timm

    from tests.tools_helpers import load_tool

    torch.manual_seed(0)
    model = timm.create_model('secvit_tiny', **kwargs).eval()
    tool = load_tool('tools/analysis_tools/visualize_clusters.py')
    image, normalize = tool.classifier_inputs(model, str(shapes_root / 'coco/val/val_00000.jpg'), 'cpu', input_size)
    return model, model.cluster_maps(normalize(image[None]))


def _assert_equitable_partition(maps, num_clusters):
    """One-hot over the clusters at every token (each token in exactly one cluster), ``num_clusters``
    clusters, sizes differing by at most one (Eqn. 4: equal contiguous chunks of the sorted tokens)."""
    assert maps.shape[1] == num_clusters
    assert ((maps == 0) | (maps == 1)).all() and (maps.sum(dim=1) == 1).all()
    sizes = maps.sum(dim=(2, 3))[0]
    assert sizes.sum() == maps.shape[2] * maps.shape[3]
    assert sizes.max() - sizes.min() <= 1 and sizes.min() >= 1


def test_secvit_clusters_at_224_are_the_papers_32_8_2(shapes_root):
    model, maps = _secvit_maps(shapes_root)
    assert model.num_clusters == (32, 8, 2, 0)
    # one map per clustering stage (the first block's); stage 4 runs full attention
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        'stages.0.blocks.0.attn': (1, 32, 56, 56),
        'stages.1.blocks.0.attn': (1, 8, 28, 28),
        'stages.2.blocks.0.attn': (1, 2, 14, 14),
    }
    for name, clusters in zip(maps, (32, 8, 2)):
        _assert_equitable_partition(maps[name], clusters)
        assert (maps[name].sum(dim=(2, 3)) == 98).all()  # 3136 / 32 = 784 / 8 = 196 / 2 = 98 tokens each
    # every block of a stage clusters, each block on its own keys (the partitions are not all the same)
    every = model.cluster_maps(torch.randn(1, 3, 224, 224), all_blocks=True)
    assert len(every) == 2 + 2 + 9
    assert all(every[k].shape[1] == (32, 8, 2)[int(k.split('.')[1])] for k in every)
    assert not torch.equal(every['stages.2.blocks.0.attn'], every['stages.2.blocks.8.attn'])


@pytest.mark.parametrize(
    'kwargs,expected',
    [
        # 200x264: stage maps 50x66, 25x33, 13x17, 7x9: no fixed count divides its N (masked padding)
        ({}, (32, 8, 2)),
        # ceil(N / 98): 3300 -> 34, 825 -> 9, 221 -> 3, 63 -> 1 (full attention, no map)
        ({'tokens_per_cluster': 98}, (34, 9, 3)),
    ],
    ids=['fixed-counts', 'tokens-per-cluster-98'],
)
def test_secvit_clusters_at_other_sizes_stay_equitable(shapes_root, kwargs, expected):
    model, maps = _secvit_maps(shapes_root, (200, 264), **kwargs)
    assert list(maps) == [f'stages.{i}.blocks.0.attn' for i in range(3)]
    for (name, stage_maps), clusters in zip(maps.items(), expected):
        tokens = stage_maps.shape[2] * stage_maps.shape[3]
        if 'tokens_per_cluster' in kwargs:
            assert clusters == math.ceil(tokens / 98)
        _assert_equitable_partition(stage_maps, clusters)


def test_tool_draws_secvit_cluster_ids_of_a_classifier(shapes_root, tmp_path):
    """timm mode, random weights: the Fig. 4 view (input + one panel per clustering stage) next to the
    heatmap and group figures."""
    from PIL import Image

    from tests.tools_helpers import load_tool

    out = run(
        [
            'tools/analysis_tools/visualize_clusters.py',
            'timm:secvit_tiny',
            shapes_root / 'coco/val/val_00000.jpg',
            '--out-dir',
            tmp_path / 'vis',
            '--top-k',
            '1',
        ],
        env={'OMP_NUM_THREADS': '1'},
    )
    for stage, clusters in enumerate((32, 8, 2)):
        assert f'stages.{stage}.blocks.0.attn: {clusters} clusters of 98-98 tokens' in out
        assert f'stages.{stage}.blocks.0.attn: ' in out and f'/ {clusters} clusters' in out  # groups
    assert 'stages.3' not in out
    for suffix in ('cluster_ids', 'clusters', 'groups'):
        with Image.open(tmp_path / 'vis' / f'val_00000_{suffix}.png') as png:
            png.verify()  # a complete, valid PNG
    tool = load_tool('tools/analysis_tools/visualize_clusters.py')
    with Image.open(tmp_path / 'vis' / 'val_00000_cluster_ids.png') as png:  # input + 3 stage panels
        assert png.size == (
            round(4 * tool.ID_PANEL_INCHES * tool.ID_DPI),
            round((tool.ID_PANEL_INCHES + 0.4) * tool.ID_DPI),
        )


def test_tool_draws_secvit_cluster_ids_of_a_detector_config(shapes_root, tmp_path, capsys):
    """Config mode with the COCO Mask R-CNN config (tokens_per_cluster=98) and a random-weight checkpoint: the
    800x800 test input clusters in all four stages, ceil(N / 98) clusters each."""
    from PIL import Image

    from mmcluster.apis import build_model, load_config
    from tests.tools_helpers import load_tool

    config = 'configs/secvit/mask-rcnn_secvit-tiny_fpn_1x_coco.py'
    torch.manual_seed(0)
    torch.save({'state_dict': build_model(load_config(config)).state_dict()}, tmp_path / 'random.pth')
    tool = load_tool('tools/analysis_tools/visualize_clusters.py')
    capsys.readouterr()
    tool.main(
        [
            config,
            str(shapes_root / 'coco/val/val_00000.jpg'),
            '--checkpoint',
            str(tmp_path / 'random.pth'),
            '--out-dir',
            str(tmp_path / 'vis'),
            '--num-clusters',
            '2',
        ]
    )
    out = capsys.readouterr().out
    # 128x128 shapes image -> 800x800: stage maps 200x200, 100x100, 50x50, 25x25
    for stage, (side, clusters) in enumerate(((200, 409), (100, 103), (50, 26), (25, 7))):
        assert clusters == math.ceil(side * side / 98)
        low = side * side // clusters
        sizes = f'{low}-{low + 1}' if side * side % clusters else f'{low}-{low}'
        assert f'stages.{stage}.blocks.0.attn: {clusters} clusters of {sizes} tokens ({side}x{side} map)' in out
    with Image.open(tmp_path / 'vis' / 'val_00000_cluster_ids.png') as png:  # input + 4 stage panels
        assert png.size == (
            round(5 * tool.ID_PANEL_INCHES * tool.ID_DPI),
            round((tool.ID_PANEL_INCHES + 0.4) * tool.ID_DPI),
        )
    assert (tmp_path / 'vis' / 'val_00000_clusters.png').is_file()
