"""tools/model_converters/convert_official.py on synthetic official ImageNet, COCO and ADE20K checkpoints."""

import numpy as np
import pytest
import timm
import torch
from mmengine.logging import MessageHub

from mmcluster.apis import load_config
from mmcluster.models.conversion import detect_family, get_converter
from mmcluster.utils.checkpoint import safe_load
from tests.official_layout import official_backbone_shapes, official_head_shapes, random_state_dict
from tests.tools_helpers import load_tool, run

ROOT_CFG = 'configs/paca_vit/'


def build(config):
    from mmengine.registry import MODELS

    cfg = load_config(ROOT_CFG + config)
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


def mmengine_meta():
    """What an mmengine-trained checkpoint carries besides weights (numpy values, log buffers)."""
    hub = MessageHub.get_instance('converter-test')
    hub.update_scalar('train/loss', 0.3)
    return {
        'meta': {'epoch': 12, 'iter': 88000, 'seed': np.int64(0), 'mmengine_version': '0.7.0'},
        'message_hub': hub.state_dict(),
    }


def official_downstream(model, backbone_shapes, head_shapes=None, seed=0):
    """An official det/seg state dict: the official backbone (and head) layout, mmdet/mmseg's own keys for the rest."""
    state = {f'backbone.{k}': v for k, v in random_state_dict(backbone_shapes, seed).items()}
    if head_shapes is not None:
        state.update({f'decode_head.{k}': v for k, v in random_state_dict(head_shapes, seed + 1).items()})
    for key, value in model.state_dict().items():
        if not key.startswith('backbone.') and not (head_shapes is not None and key.startswith('decode_head.')):
            state[key] = torch.randn_like(value.float()).to(value.dtype)
    return state


def _tool():
    return load_tool('tools/model_converters/convert_official.py')


def convert_file(tmp_path, checkpoint, cli=False):
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted.pth'
    torch.save(checkpoint, src)
    if cli:
        out = run(['tools/model_converters/convert_official.py', src, dst])
    else:
        out = 'converted {} {} checkpoint'.format(*_tool().convert(str(src), str(dst)))
    return safe_load(dst), out


def test_imagenet_checkpoint(tmp_path):
    official = random_state_dict(official_backbone_shapes('small', clustering='mlp'))
    converted, out = convert_file(tmp_path, {'model': official, 'epoch': 299}, cli=True)
    assert 'converted paca_vit imagenet checkpoint' in out
    model = timm.create_model('paca_small_mlp')
    model.load_state_dict(converted['state_dict'], strict=True)
    assert torch.equal(model.head.weight, official['head.weight'])


@pytest.mark.parametrize(
    'config,arch,kwargs',
    [
        ('mask-rcnn_paca-tiny_fpn_1x_coco.py', 'tiny', {}),
        ('mask-rcnn_paca-base-teacher_fpn_1x_coco.py', 'base_teacher', {}),
    ],
)
def test_coco_checkpoint(tmp_path, config, arch, kwargs):
    model = build(config)
    state = official_downstream(model, official_backbone_shapes(arch, head=False, **kwargs))
    converted, out = convert_file(tmp_path, dict(mmengine_meta(), state_dict=state))
    assert 'converted paca_vit detection checkpoint' in out
    model.load_state_dict(converted['state_dict'], strict=True)
    assert torch.equal(model.roi_head.bbox_head.fc_cls.weight, state['roi_head.bbox_head.fc_cls.weight'])
    assert converted['meta']['source_meta']['epoch'] == 12


@pytest.mark.parametrize(
    'config,arch,clusters,dims',
    [
        ('paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py', 'tiny', (200, 200, 200, 0), (96, 192, 320, 384)),
        ('paca-head_paca-base-teacher_8xb2-160k_ade20k-512x512.py', 'base_teacher', (200,) * 4, (96, 192, 384, 512)),
        ('upernet_paca-small_8xb2-160k_ade20k-512x512.py', 'small', (200, 200, 200, 0), None),
    ],
)
def test_ade20k_checkpoint(tmp_path, config, arch, clusters, dims):
    model = build(config)
    head = official_head_shapes(in_channels=dims) if dims else None
    state = official_downstream(model, official_backbone_shapes(arch, clusters=clusters, head=False), head)
    converted, out = convert_file(tmp_path, dict(mmengine_meta(), state_dict=state))
    assert 'converted paca_vit segmentation checkpoint' in out
    model.load_state_dict(converted['state_dict'], strict=True)
    if dims:
        assert torch.equal(model.decode_head.to_clusters.weight, state['decode_head.clustering.1.weight'])
        assert torch.equal(model.decode_head.key.norm.running_mean, state['decode_head.k.2.running_mean'])
    else:
        assert torch.equal(model.auxiliary_head.conv_seg.weight, state['auxiliary_head.conv_seg.weight'])


def test_rejects_what_is_not_official():
    with pytest.raises(ValueError, match='not an official'):
        get_converter('paca_vit').convert_checkpoint({'layer1.0.conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='no known official layout'):
        detect_family({'layer1.0.conv1.weight': torch.zeros(1)})


def test_unknown_official_key_is_an_error_naming_it():
    state = random_state_dict(official_backbone_shapes('tiny'))
    state['stage1.0.attn.extra_scale'] = torch.zeros(1)
    with pytest.raises(KeyError, match='stage1.0.attn.extra_scale'):
        get_converter('paca_vit').convert_backbone(state)
