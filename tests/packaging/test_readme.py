"""The README's snippets, verbatim: configs load in a directory outside the repository and their models build
in mmdet's and mmseg's scope; the code snippets run (offline)."""

import ast
import copy
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmcluster.utils.mim import register_mim_package
from tests.packaging.helpers import cache_metafile_reads
from tests.tools_helpers import ROOT

README = (ROOT / 'README.md').read_text(encoding='utf-8')
BLOCKS = re.findall(r'^```python\n(.*?)^```', README, re.S | re.M)
CONFIGS = [b for b in BLOCKS if '_base_' in b or 'model = dict(' in b]
FULL = [b for b in CONFIGS if '_base_' in b]  # complete configs
FRAGMENTS = [b for b in CONFIGS if '_base_' not in b]  # lines to add to any mmdet / mmseg config
CODE = [b for b in BLOCKS if b not in CONFIGS]
# what a fragment is added to in the test: a typical mmdet / mmseg model base
# (mmseg's sets model.pretrained to a ResNet checkpoint, which EncoderDecoder hands to the backbone)
HOSTS = {'mmdet': 'mmdet::_base_/models/retinanet_r50_fpn.py', 'mmseg': 'mmseg::_base_/models/fpn_r50.py'}


@pytest.fixture(autouse=True)
def fast_configs(monkeypatch):
    register_mim_package()  # until mmcluster/__init__.py calls it on import
    cache_metafile_reads(monkeypatch)


def load(snippet, tmp_path, prefix=''):
    path = tmp_path / 'my_config.py'
    path.write_text(prefix + snippet)
    return Config.fromfile(str(path))


def registry(scope):
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    init_default_scope(scope)
    return {'mmdet': DET_MODELS, 'mmseg': SEG_MODELS}[scope]


def build(cfg, scope):
    model_cfg = copy.deepcopy(cfg.model)
    if model_cfg.backbone.get('init_cfg'):
        model_cfg.backbone.init_cfg.checkpoint = None  # build only: no weights
    return registry(scope).build(model_cfg)


def test_readme_has_the_snippets():
    assert len(FULL) >= 3 and len(FRAGMENTS) == 1 and CODE
    assert any("'mmcluster::" in b for b in FULL)


def test_two_commands():
    block = re.search(r'## Two commands\n\n```bash\n(.*?)```', README, re.S).group(1)
    commands = [line.split('#')[0].strip() for line in block.splitlines() if line.split('#')[0].strip()]
    assert commands == ['make demo', 'make test']


@pytest.mark.parametrize('index', range(len(FULL)))
def test_config_snippet_loads_and_builds(index, tmp_path):
    snippet = FULL[index]
    cfg = load(snippet, tmp_path)
    assert cfg.default_scope in ('mmdet', 'mmseg')
    model = build(cfg, cfg.default_scope)
    assert type(model.backbone).__name__ == 'PaCaViT'
    if 'metainfo' in snippet:  # training on your own data: the dataset takes the classes, heads match
        from mmengine.registry import DATASETS

        classes = tuple(cfg.metainfo['classes'])
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            dataset = DATASETS.build(dict(cfg[loader].dataset, lazy_init=True))
            assert dataset.metainfo['classes'] == classes, loader
        if cfg.default_scope == 'mmdet':
            assert model.roi_head.bbox_head.num_classes == model.roi_head.mask_head.num_classes == len(classes)
        else:
            assert model.decode_head.num_classes == len(classes)
            # the README's reason for BaseSegDataset
            with pytest.raises(ValueError, match='not a subset'):
                DATASETS.build(dict(cfg.train_dataloader.dataset, type='ADE20KDataset', lazy_init=True))


@pytest.mark.parametrize('scope', sorted(HOSTS))
def test_backbone_snippet_in_mmdet_and_mmseg_configs(scope, tmp_path):
    (snippet,) = FRAGMENTS
    cfg = load(snippet, tmp_path, prefix=f"_base_ = ['{HOSTS[scope]}']\n")
    model = build(cfg, scope)
    assert type(model.backbone).__name__ == 'PaCaViT' and cfg.model.backbone.arch == 'small'
    # the widths the snippet's comment gives for the neck / decode head
    widths = {
        arch: [int(w) for w in match.split(',')]
        for match, archs in re.findall(r'\[([\d, ]+)\] for (tiny and small|base)', snippet)
        for arch in archs.split(' and ')
    }
    assert set(widths) == {'tiny', 'small', 'base'}
    with torch.no_grad():
        assert [f.shape[1] for f in model.backbone.eval()(torch.rand(1, 3, 64, 64))] == widths['small']
    from mmcluster.models.backbones.paca_vit import PACA_ARCHS

    assert {arch: list(PACA_ARCHS[arch]['embed_dims']) for arch in widths} == widths


def test_code_snippets(tmp_path):
    import timm

    import mmcluster  # noqa: F401

    for block in CODE:
        ast.parse(block)
        for name in re.findall(r"timm\.create_model\('([^']+)'", block):
            assert timm.is_model(name), name
    # the offline line (inline code): a local checkpoint file instead of the download
    (line,) = re.findall(r'`(timm\.create_model\([^`]*pretrained_cfg_overlay[^`]*\))`', README)
    path = re.search(r"file='([^']+)'", line).group(1)
    name = re.search(r"create_model\('([^']+)'", line).group(1)
    reference = timm.create_model(name)
    torch.save(reference.state_dict(), tmp_path / 'weights.pth')
    model = eval(line.replace(path, str(tmp_path / 'weights.pth')), {'timm': timm})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
