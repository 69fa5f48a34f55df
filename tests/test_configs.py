"""Every config parses, builds, and its model has the paper's size."""
from pathlib import Path

import pytest
from mmengine.config import Config

from mmcluster.apis import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
# config name -> the paper's #params (M): Tables 2, 3 (UperNet counts include the auxiliary head, spec §3.3)
PAPER_PARAMS = {
    'mask-rcnn_paca-tiny_fpn_1x_coco': 32.0,
    'paca-head_paca-tiny_8xb2-160k_ade20k-512x512': 13.3,
}


def build(cfg):
    from mmengine.registry import MODELS
    cfg.model.backbone.init_cfg = None  # no download
    return MODELS.build(cfg.model)


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    cfg = load_config(str(path))
    assert cfg.custom_imports == dict(imports=['mmcluster'], allow_failed_imports=False)
    model = build(cfg)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if path.stem in PAPER_PARAMS:
        assert params == pytest.approx(PAPER_PARAMS[path.stem], abs=0.1)


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
    """The official ADE20K config's 'clustering.4' key matched only conv clustering (spec §9.6)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    cfg = load_config(str(ROOT / 'configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py'))
    for arch, clustering in (('tiny', 'conv'), ('small', 'mlp'), ('small_teacher', 'teacher')):
        cfg.model.backbone.update(arch=arch, clustering=clustering, init_cfg=None,
                                  num_clusters=(200,) * 4 if clustering == 'teacher' else (200, 200, 200, 0))
        cfg.model.decode_head.in_channels = [96, 192, 320, 384]
        model = MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        names = {id(p): n for n, p in model.named_parameters()}
        boosted = {names[id(p)] for g in wrapper.optimizer.param_groups for p in g['params']
                   if g['lr'] == pytest.approx(6e-4)}
        outputs = {n for n in names.values() if n.startswith('backbone.') and '.to_clusters.' in n}
        assert outputs and outputs <= boosted, clustering
        assert not any(n.startswith('backbone.') and '.to_clusters.' not in n for n in boosted)
