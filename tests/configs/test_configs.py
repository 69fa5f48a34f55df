"""Every config parses, builds, runs its model, has the paper's size; each family trains on the bundled data."""

import copy
import math
import re

import pytest
import torch
from mmengine.config import Config

from mmcluster.apis import load_config
from tests.tools_helpers import ROOT, load_tool, run

CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
CONFIG_PATHS = {p.stem: p for p in CONFIGS}
DET = 'mask-rcnn_paca-{}_fpn_1x_coco'
HEAD = 'paca-head_paca-{}_8xb2-160k_ade20k-512x512'
UPER = 'upernet_paca-{}_8xb2-160k_ade20k-512x512'
# config -> (#params M, FLOPs G) of the paper's Tables 2, 3 and 4. FLOPs: Mask R-CNN at 1280x800, ADE20K
# at 512x512, counted by torchprofile (our `macs_torchprofile`); UperNet params include the auxiliary head.
PAPER = {
    DET.format('tiny'): (32.0, 252),
    DET.format('small'): (41.8, 296),
    DET.format('small-mlp'): (42.4, 303),
    DET.format('small-teacher'): (40.9, 292),
    DET.format('base'): (66.6, 373),
    DET.format('base-teacher'): (61.4, 372),
    DET.format('small-m100x4'): (42.0, 294),
    DET.format('small-m49-64-81-100'): (42.0, 289),
    DET.format('small-m100-81-64-49'): (42.0, 291),
    DET.format('small-m49-49-49-0'): (41.8, 289),
    DET.format('small-m2-2-2-0'): (41.6, 283),
    DET.format('small-m100x4-blockwise'): (44.0, 304),
    UPER.format('tiny'): (41.6, 229.9),
    UPER.format('small'): (51.4, 242.7),
    UPER.format('base'): (77.2, 264.1),
    HEAD.format('tiny'): (13.3, 34.4),
    HEAD.format('small'): (23.2, 47.2),
    HEAD.format('small-mlp'): (24.0, 50.0),
    HEAD.format('small-teacher'): (22.2, 46.4),
    HEAD.format('base'): (48.0, 68.5),
    HEAD.format('base-teacher'): (48.8, 68.7),
    HEAD.format('small-m100x4'): (23.4, 47.3),
    HEAD.format('small-m49-64-81-100'): (23.4, 47.3),
    HEAD.format('small-m100-81-64-49'): (23.7, 47.3),
    HEAD.format('small-m49-49-49-0'): (23.2, 47.2),
    HEAD.format('small-m2-2-2-0'): (23.2, 47.2),
    HEAD.format('small-m100x4-blockwise'): (25.8, 50.9),
}
# Rows where the paper's #params disagree with the official code (docs/model_zoo.md); we check the official
# code's count instead.
OFFICIAL_CODE_PARAMS = {
    # backbone 47,659,192 - 513,000 (classifier) + the same neck/heads as PaCa-Base (the official config: "about 67.4M")
    DET.format('base-teacher'): 67.355,
    # backbone 21,978,120 - 385,000 + the same neck/heads as the other PaCa-Small rows
    DET.format('small-m2-2-2-0'): 41.752,
    # downstream this is (200, 200, 200, 200) clusters, the same architecture as the (100,) * 4 row's 23.4M
    HEAD.format('small-m100-81-64-49'): 23.410,
}


def build(cfg):
    from mmengine.registry import MODELS

    cfg.model.backbone.init_cfg = None  # no download
    return MODELS.build(cfg.model)


def test_there_are_configs():
    assert len(CONFIGS) >= 45
    assert set(PAPER) <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    cfg = load_config(str(path))
    assert cfg.custom_imports == dict(imports=['mmcluster'], allow_failed_imports=False)
    model = build(cfg).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    # the backbone's output channels fit the neck / heads: run them on a small odd-sized image
    with torch.no_grad():
        feats = model.extract_feat(torch.rand(1, 3, 72, 88))
        if cfg.default_scope == 'mmseg' and cfg.model.decode_head.type == 'Mask2FormerHead':
            assert [f.shape[1] for f in feats] == list(cfg.model.decode_head.in_channels)
        elif cfg.default_scope == 'mmseg':
            assert model.decode_head(feats).shape[:2] == (1, cfg.model.decode_head.num_classes)
            if getattr(model, 'auxiliary_head', None) is not None:
                assert model.auxiliary_head(feats).shape[:2] == (1, cfg.model.auxiliary_head.num_classes)
        elif 'neck' in cfg.model:
            assert [f.shape[1] for f in feats] == [cfg.model.neck.out_channels] * cfg.model.neck.num_outs
        else:  # Mask2Former: the pixel decoder takes the backbone's maps
            assert [f.shape[1] for f in feats] == list(cfg.model.panoptic_head.in_channels)
    if path.stem in OFFICIAL_CODE_PARAMS:
        assert params == pytest.approx(OFFICIAL_CODE_PARAMS[path.stem], abs=0.001)
        assert abs(params - PAPER[path.stem][0]) > 0.1  # the paper's value really is off
    elif path.stem in PAPER:
        assert params == pytest.approx(PAPER[path.stem][0], abs=0.1)
    if 'amp' in path.stem:
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'


def _get_flops():
    return load_tool('tools/analysis_tools/get_flops.py').main


FLOPS_CHECKED = (
    [DET.format(v) for v in ('tiny', 'small', 'base')]
    + [UPER.format('tiny')]
    + [
        HEAD.format(v)
        for v in (
            'tiny',
            'small',
            'small-mlp',
            'small-teacher',
            'base',
            'base-teacher',
            'small-m100x4',
            'small-m100x4-blockwise',
        )
    ]
)


@pytest.mark.parametrize('name', FLOPS_CHECKED)
def test_get_flops_agrees_with_the_paper(name):
    """Table 2 (Mask R-CNN, 1280x800) within 5%, Table 3 / 4 (ADE20K, 512x512) within 3%."""
    is_det = name.startswith('mask-rcnn')
    result = _get_flops()([f'configs/paca_vit/{name}.py', '--shape', *(('800', '1280') if is_det else ('512', '512'))])
    assert result['macs_torchprofile'] / 1e9 == pytest.approx(PAPER[name][1], rel=0.05 if is_det else 0.03)
    if not is_det:  # no transposed convolutions: both conventions agree
        assert result['macs'] == result['macs_torchprofile']


@pytest.mark.parametrize(
    'model,paper',
    [
        ('paca_tiny', 3.2),
        ('paca_small', 5.5),
        ('paca_small_mlp', 5.9),
        ('paca_small_teacher', 5.4),
        ('paca_base', 9.5),
        ('paca_base_teacher', 9.7),
    ],
)
def test_get_flops_timm_models_agree_with_table_1(model, paper):
    assert _get_flops()([model, '--shape', '224'])['macs'] / 1e9 == pytest.approx(paper, rel=0.03)


def test_configs_inherit_upstream_bases():
    text = (ROOT / 'configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py').read_text()
    assert "'mmdet::_base_/models/mask-rcnn_r50_fpn.py'" in text
    cfg = Config.fromfile(str(ROOT / 'configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py'))
    assert 'file_client_args' not in cfg.pretty_text and cfg.backend_args is None
    assert cfg.optim_wrapper.optimizer.type == 'AdamW' and cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.0)}
    assert cfg.train_cfg.max_epochs == 12 and cfg.train_dataloader.batch_size == 2
    seg = Config.fromfile(str(ROOT / 'configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py'))
    assert seg.model.backbone.num_clusters == (200, 200, 200, 0)
    assert seg.optim_wrapper.paramwise_cfg.custom_keys['to_clusters'] == dict(lr_mult=10.0)
    assert seg.train_cfg.max_iters == 160000


def test_lr_multiplier_reaches_every_clustering_type():
    """The official ADE20K configs' 'clustering.4' key (segmentation/configs/paca_vit/paca_head/ of
    iVMCL/PaCaViT) matched only conv clustering."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS

    cfg = load_config(str(ROOT / 'configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py'))
    for arch, clustering in (('tiny', 'conv'), ('small', 'mlp'), ('small_teacher', 'teacher')):
        cfg.model.backbone.update(
            arch=arch,
            clustering=clustering,
            init_cfg=None,
            num_clusters=(200,) * 4 if clustering == 'teacher' else (200, 200, 200, 0),
        )
        cfg.model.decode_head.in_channels = [96, 192, 320, 384]
        model = MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        names = {id(p): n for n, p in model.named_parameters()}
        boosted = {
            names[id(p)] for g in wrapper.optimizer.param_groups for p in g['params'] if g['lr'] == pytest.approx(6e-4)
        }
        outputs = {n for n in names.values() if n.startswith('backbone.') and '.to_clusters.' in n}
        assert outputs and outputs <= boosted, clustering
        assert not any(n.startswith('backbone.') and '.to_clusters.' not in n for n in boosted)


DETECTORS = ('mask-rcnn', 'cascade-mask-rcnn', 'retinanet')


def _num_classes_options(config: str, num_classes: int) -> list:
    """--cfg-options setting every classification head of a detector config to ``num_classes``. Cascade
    R-CNN's roi_head.bbox_head is a list of three heads, one per stage: mmengine's merge addresses list
    items by index (``bbox_head.0.num_classes``), so each keeps its own settings."""
    if config.startswith('retinanet'):
        return [f'model.bbox_head.num_classes={num_classes}']
    bbox = (
        [f'model.roi_head.bbox_head.{i}.' for i in range(3)]
        if config.startswith('cascade')
        else ['model.roi_head.bbox_head.']
    )
    return [f'{head}num_classes={num_classes}' for head in bbox] + [
        f'model.roi_head.mask_head.num_classes={num_classes}'
    ]


def _bundled_data_options(shapes_root, config: str) -> list:
    """--cfg-options that point a real COCO / ADE20K config at the bundled shapes data (2 training and 2
    validation images, 2 iterations, no pretrained download; detectors: 3 classes and 1 image per batch),
    leaving the rest of its model, pipelines, optimizer and schedule as they are."""
    options = ['model.backbone.init_cfg=None', 'default_hooks.logger.interval=1']
    for split in ('train', 'val'):
        options += [
            f'{split}_dataloader.num_workers=0',
            f'{split}_dataloader.persistent_workers=False',
            f'{split}_dataloader.dataset.indices=2',
        ]
    if config.startswith(DETECTORS):
        root = f'{shapes_root}/coco/'
        for split in ('train', 'val'):
            options += [
                f'{split}_dataloader.dataset.data_root={root}',
                f'{split}_dataloader.dataset.ann_file=annotations/instances_{split}.json',
                f'{split}_dataloader.dataset.data_prefix.img={split}/',
                f'{split}_dataloader.dataset.metainfo.classes=[circle,square,triangle]',
            ]
        return options + [
            f'val_evaluator.ann_file={root}annotations/instances_val.json',
            'train_cfg.max_epochs=1',
            *_num_classes_options(config, 3),
            'train_dataloader.batch_size=1',
            'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1',
        ]
    return options + [
        f'train_dataloader.dataset.data_root={shapes_root}/ade',
        f'val_dataloader.dataset.data_root={shapes_root}/ade',
        'train_cfg.max_iters=2',
        'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2',
    ]


@pytest.mark.parametrize(
    'config,heads',
    [
        ('mask-rcnn_secvit-tiny_fpn_1x_coco', ['roi_head.bbox_head', 'roi_head.mask_head']),
        ('retinanet_secvit-tiny_fpn_1x_coco', ['bbox_head']),
        (
            'cascade-mask-rcnn_secvit-small_fpn_4conv1fc-giou_ms-crop-3x_coco',
            ['roi_head.bbox_head.0', 'roi_head.bbox_head.1', 'roi_head.bbox_head.2', 'roi_head.mask_head'],
        ),
    ],
)
def test_bundled_data_options_reach_every_detector_head(config, heads, shapes_root):
    """Parsed as tools/train.py parses --cfg-options: every classification head gets the shapes data's 3
    classes (with 80 left somewhere, training on 3-class data would still run), and Cascade's three stage heads
    keep their own box coder settings."""
    import argparse

    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(str(CONFIG_PATHS[config]))
    before = copy.deepcopy(cfg.model)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *_bundled_data_options(shapes_root, config)]).cfg_options)

    def at(model, path):
        for key in path.split('.'):
            model = model[int(key)] if key.isdigit() else model[key]
        return model

    for head in heads:
        assert at(before, head).num_classes == 80 and at(cfg.model, head).num_classes == 3, head
        assert {k: v for k, v in at(cfg.model, head).items() if k != 'num_classes'} == {
            k: v for k, v in at(before, head).items() if k != 'num_classes'
        }, head
    assert cfg.train_dataloader.dataset.metainfo.classes == ['circle', 'square', 'triangle']


@pytest.mark.parametrize(
    'config',
    [
        'mask-rcnn_paca-tiny_fpn_1x_coco',
        'mask-rcnn_paca-small_fpn_ms-crop-3x_coco',
        'upernet_paca-tiny_8xb2-160k_ade20k-512x512',
        'paca-head_paca-small-mlp_8xb2-160k_ade20k-512x512',
        'fpn_paca-tiny_8xb2-80k_ade20k-512x512',
        'mask-rcnn_secvit-tiny_fpn_1x_coco',
        'mask-rcnn_secvit-small_fpn_ms-crop-3x_coco',
        'cascade-mask-rcnn_secvit-small_fpn_4conv1fc-giou_ms-crop-3x_coco',
        'retinanet_secvit-tiny_fpn_1x_coco',
        'upernet_secvit-small_8xb2-160k_ade20k-512x512',
        'fpn_secvit-tiny_8xb2-80k_ade20k-512x512',
    ],
)
def test_config_family_trains_on_bundled_data(config, shapes_root, tmp_path):
    """Each family's real recipe (pipeline with its full-size multi-scale augmentation, optimizer with its
    parameter-wise rules, schedule) runs through tools/train.py; only the data and the length change."""

    out = run(
        [
            'tools/train.py',
            CONFIG_PATHS[config].relative_to(ROOT),
            '--work-dir',
            tmp_path,
            '--cfg-options',
            *_bundled_data_options(shapes_root, config),
        ],
        timeout=900,
    )
    losses = [float(v) for v in re.findall(r'\sloss: ([0-9.]+)', out)]
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses), out[-3000:]
    assert list(tmp_path.glob('*.pth')), out[-3000:]
    # validation ran through the config's evaluator (two iterations leave a detector with no detections
    # to score, so CocoMetric reports none; mIoU is always printed)
    assert re.search(r'Evaluating bbox' if config.startswith(DETECTORS) else r'mIoU: [0-9.]+', out), out[-3000:]
