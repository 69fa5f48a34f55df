"""tools/: training, evaluation, resume with torch >= 2.6, CPU distributed runs, heatmaps, pretrained loading."""

import json
import re

import numpy as np
import pytest
import torch

from mmcluster.models.backbones.paca_vit import convert_official_state_dict
from mmcluster.utils.checkpoint import safe_load
from tests.official_layout import official_backbone_shapes, random_state_dict
from tests.tools_helpers import DET_DEMO, SEG_DEMO, run, shapes_options


@pytest.fixture(scope='module')
def det_run(shapes_root, tmp_path_factory):
    """Mask R-CNN + PaCa-Tiny: one short epoch on 8 images, with validation (COCO bbox and segm)."""
    work_dir = tmp_path_factory.mktemp('det')
    out = run(
        [
            'tools/train.py',
            DET_DEMO,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *shapes_options(shapes_root, 'det'),
            'train_dataloader.dataset.indices=8',
            'train_dataloader.batch_size=2',
            'train_cfg.max_epochs=1',
            'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1',
        ]
    )
    return work_dir, out


def test_train_detector_logs_losses_and_evaluates(det_run):
    work_dir, out = det_run
    assert (work_dir / 'epoch_1.pth').is_file()
    assert re.search(r'Epoch\(train\)\s+\[1\]\[\s*4/4\].*loss_mask', out)
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out


def test_test_tool_and_heatmaps(det_run, shapes_root, tmp_path):
    work_dir, _ = det_run
    out = run(
        [
            'tools/test.py',
            DET_DEMO,
            work_dir / 'epoch_1.pth',
            '--work-dir',
            tmp_path / 'test',
            '--cfg-options',
            *shapes_options(shapes_root, 'det'),
        ]
    )
    metrics = json.loads(re.search(r'^metrics: (.*)$', out, re.M).group(1))
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
    out = run(
        [
            'tools/analysis_tools/visualize_clusters.py',
            DET_DEMO,
            shapes_root / 'coco/val/val_00000.jpg',
            '--checkpoint',
            work_dir / 'epoch_1.pth',
            '--out-dir',
            tmp_path / 'vis',
            '--num-clusters',
            '3',
        ]
    )
    png = tmp_path / 'vis' / 'val_00000_clusters.png'
    assert png.is_file() and png.stat().st_size > 10_000


def test_dist_train_on_cpu_with_two_processes(shapes_root, tmp_path):
    out = run(
        [
            'bash',
            'tools/dist_train.sh',
            SEG_DEMO,
            '2',
            '--work-dir',
            tmp_path,
            '--cfg-options',
            *shapes_options(shapes_root, 'seg'),
            'train_dataloader.batch_size=2',
            'train_cfg.max_iters=2',
            'train_cfg.val_interval=2',
            'default_hooks.checkpoint.interval=2',
        ],
        env={'PORT': '29617', 'OMP_NUM_THREADS': '1'},
    )
    assert 'Distributed training: True' in out and 'GPU number: 2' in out
    assert 'replaced SyncBN by BN' in out
    assert 'mIoU' in out and (tmp_path / 'iter_2.pth').is_file()


def test_pretrained_backbone_survives_runner_init_weights(shapes_root, repo_root, tmp_path):
    """An official ImageNet checkpoint with 100 clusters in a 200-cluster segmentor: after Runner's
    init_weights and one step with lr 0, every backbone tensor except the clustering outputs is the
    checkpoint's, and the log names the re-initialised layers."""
    official = random_state_dict(official_backbone_shapes('tiny'), seed=3)
    ckpt = tmp_path / 'IMNET_224_pacavit_tiny_p2cconv_100_0.pth'
    torch.save(official, ckpt)
    config = tmp_path / 'pretrained_demo.py'  # a user's config inheriting ours
    config.write_text(
        f"_base_ = '{repo_root / SEG_DEMO}'\n"
        'model = dict(backbone=dict(num_clusters=(200, 200, 200, 0),\n'
        f"    init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='{ckpt}')))\n"
    )
    out = run(
        [
            'tools/train.py',
            config,
            '--work-dir',
            tmp_path / 'wd',
            '--cfg-options',
            *shapes_options(shapes_root, 'seg'),
            'optim_wrapper.optimizer.lr=0.0',
            'train_dataloader.batch_size=2',
            'train_cfg.max_iters=1',
            'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=1',
        ]
    )
    assert 're-initialised' in out and 'stages.0.blocks.0.attn.clustering.to_clusters.weight' in out
    trained = safe_load(tmp_path / 'wd' / 'iter_1.pth')['state_dict']
    expected = convert_official_state_dict(official)
    backbone = {k[len('backbone.') :]: v for k, v in trained.items() if k.startswith('backbone.')}
    for key, value in backbone.items():
        if '.to_clusters.' in key:
            assert value.shape[0] == 200
        else:
            assert torch.equal(value, expected[key]), key


@pytest.fixture(scope='module')
def seg_run(shapes_root, tmp_path_factory):
    """PaCa head + PaCa-Tiny: two iterations."""
    work_dir = tmp_path_factory.mktemp('seg')
    run(
        [
            'tools/train.py',
            SEG_DEMO,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *shapes_options(shapes_root, 'seg'),
            'train_dataloader.batch_size=2',
            'train_cfg.max_iters=2',
            'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=2',
        ]
    )
    return work_dir


def test_image_demo_draws_detections_and_segmentations(det_run, seg_run, shapes_root, tmp_path):
    from PIL import Image

    image = shapes_root / 'coco/val/val_00001.jpg'
    out = run(
        [
            'demo/image_demo.py',
            image,
            DET_DEMO,
            det_run[0] / 'epoch_1.pth',
            '--out-file',
            tmp_path / 'det.jpg',
            '--score-thr',
            '0.0',
        ]
    )
    assert re.search(r'\d+ objects with score >= 0.0', out)
    out = run(['demo/image_demo.py', image, SEG_DEMO, seg_run / 'iter_2.pth', '--out-file', tmp_path / 'seg.jpg'])
    assert 'classes present:' in out
    for name in ('det.jpg', 'seg.jpg'):
        drawn = Image.open(tmp_path / name)
        assert drawn.size == Image.open(image).size
        assert (
            np.asarray(drawn, dtype=float) - np.asarray(Image.open(image), dtype=float)
        ).std() > 1  # something drawn


def test_segmentor_heatmaps_include_the_class_aligned_head_clusters(seg_run, shapes_root, tmp_path):
    run(
        [
            'tools/analysis_tools/visualize_clusters.py',
            SEG_DEMO,
            shapes_root / 'ade/images/validation/val_00000.jpg',
            '--checkpoint',
            seg_run / 'iter_2.pth',
            '--out-dir',
            tmp_path,
            '--all-clusters',
        ]
    )
    assert (tmp_path / 'val_00000_clusters.png').is_file()
    assert (tmp_path / 'val_00000_decode_head-to_clusters_all.png').is_file()
    assert (tmp_path / 'val_00000_stages-2-blocks-0-attn-clustering_all.png').is_file()
