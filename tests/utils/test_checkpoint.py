"""Official checkpoints convert and load; loading is safe, reported and never skips a missing file."""

import logging
import os
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader

from mmcluster.models.backbones.paca_vit import (
    PaCaViT,
    PaCaViTClassifier,
    convert_official_head_state_dict,
    convert_official_state_dict,
)
from mmcluster.utils.checkpoint import load_pretrained
from tests.official_layout import official_backbone_shapes, official_head_shapes, random_state_dict

# (arch, official kwargs, our kwargs, entry count of the official state dict)
VARIANTS = [
    ('tiny', {}, {}, 239),
    ('small', {}, {}, 417),
    ('base', {}, {}, 577),
    ('small', dict(clustering='mlp'), dict(clustering='mlp'), 414),
    ('small', dict(clusters=(100,) * 4), dict(num_clusters=(100,) * 4), 428),
    ('small', dict(clusters=(100,) * 4, blockwise=True), dict(num_clusters=(100,) * 4, assignment='block'), 503),
    ('small', dict(clusters=(49, 64, 81, 100)), dict(num_clusters=(49, 64, 81, 100)), None),
    ('tiny_teacher', {}, {}, 395),
    ('small_teacher', {}, {}, 555),
    ('base_teacher', {}, {}, 763),
]


@pytest.mark.parametrize('arch,official_kwargs,kwargs,entries', VARIANTS)
def test_every_official_key_converts_onto_the_model(arch, official_kwargs, kwargs, entries):
    shapes = official_backbone_shapes(arch, **official_kwargs)
    if entries is not None:
        assert len(shapes) == entries  # the synthetic layout agrees with the official counts
    official = random_state_dict(shapes)
    model = PaCaViTClassifier(arch, **kwargs)
    converted = convert_official_state_dict(official)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    model.load_state_dict(converted, strict=True)
    # values arrive where they belong, not just with matching shapes
    first_block = 'stages.0.blocks.0.attn.clustering'
    if 'teacher' in arch:
        assert torch.equal(model.teacher.to_clusters['0'].weight, official['paca_teacher.to_clusters1.weight'])
        assert torch.equal(
            model.teacher.downsamples[0].conv.conv.weight, official['paca_teacher.transition1.0.conv.weight']
        )
    elif kwargs.get('clustering') == 'mlp':
        assert torch.equal(
            model.get_parameter(f'{first_block}.to_clusters.weight'),
            official['stage1.0.attn.clustering.clustering.2.weight'],
        )
    else:
        assert torch.equal(
            model.get_parameter(f'{first_block}.to_clusters.weight'),
            official['stage1.0.attn.clustering.clustering.4.weight'],
        )
    assert torch.equal(model.stages[1].downsample.proj[0].weight, official['transition1.proj.weight'])
    assert torch.equal(model.stages[3].norm.weight, official['norm4.weight'])


def test_converter_rejects_unknown_keys():
    official = random_state_dict(official_backbone_shapes('tiny'))
    official['stage1.0.attn.gamma'] = torch.zeros(3)
    with pytest.raises(KeyError, match='gamma'):
        convert_official_state_dict(official)


def test_official_head_keys_convert():
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    with DefaultScope.overwrite_default_scope('mmseg'):
        head = MODELS.build(
            dict(
                type='PaCaHead',
                in_channels=[96, 192, 320, 384],
                in_index=[0, 1, 2, 3],
                channels=256,
                num_classes=150,
                norm_cfg=dict(type='BN'),
            )
        )
    shapes = official_head_shapes()
    converted = convert_official_head_state_dict(random_state_dict(shapes))
    own = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == own
    head.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in head.parameters()) == 1_450_284  # official PaCaSegHead: 1.450M


def _save_official(tmp_path, arch='tiny', wrap='model', **kwargs):
    state = random_state_dict(official_backbone_shapes(arch, **kwargs))
    path = tmp_path / f'official_{arch}.pth'
    torch.save({wrap: state} if wrap else state, path)
    return path, state


def _list_logger():
    records = []
    logger = logging.getLogger(f'test-{len(records)}-{id(records)}')
    logger.setLevel(logging.INFO)
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    return logger, records


def test_downstream_cluster_change_reinitialises_only_clustering_outputs(tmp_path):
    path, official = _save_official(tmp_path, 'tiny')
    model = PaCaViT('tiny', num_clusters=(200, 200, 200, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logger, records = _list_logger()
    report = load_pretrained(
        model,
        str(path),
        convert=convert_official_state_dict,
        may_reinit=lambda k: '.to_clusters.' in k,
        ignore_unexpected=('head.',),
        logger=logger,
    )
    reinit = [k for k, _, _ in report.reinitialized]
    assert reinit == [f'stages.{i}.blocks.0.attn.clustering.to_clusters.weight' for i in range(3)]
    assert report.missing == [] and report.unexpected == [] and report.ignored == ['head.weight', 'head.bias']
    converted = convert_official_state_dict(official)
    state = model.state_dict()
    for key in state:
        if key in reinit:
            assert torch.equal(state[key], before[key]) and state[key].shape[0] == 200
        else:
            assert torch.equal(state[key], converted[key]), key
    log = '\n'.join(records)
    assert 're-initialised' in log and all(k in log for k in reinit)


def test_init_cfg_loads_after_initialisation_and_converts(tmp_path):
    path, official = _save_official(tmp_path, 'small', wrap='state_dict', clustering='mlp')
    model = PaCaViT(
        'small',
        clustering='mlp',
        num_clusters=(200, 200, 200, 0),
        init_cfg=dict(type='Pretrained', checkpoint=str(path)),
    )
    model.init_weights()
    assert torch.equal(model.stages[2].blocks[5].mlp.fc1.weight, official['stage3.5.mlp.fc1.weight'])
    assert model.stages[0].blocks[0].attn.clustering.to_clusters.weight.shape == (200, 384)


def test_detector_checkpoint_prefix_is_stripped(tmp_path):
    own = PaCaViT('tiny')
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in own.state_dict().items()}, 'meta': {'epoch': 1}}, path)
    model = PaCaViT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_checkpoint_is_an_error():
    model = PaCaViT('tiny', init_cfg=dict(type='Pretrained', checkpoint='/nonexistent/paca_tiny.pth'))
    with pytest.raises(FileNotFoundError):
        model.init_weights()


def test_wrong_model_shape_mismatch_is_an_error(tmp_path):
    path, _ = _save_official(tmp_path, 'base')
    with pytest.raises(ValueError, match='shape mismatch'):
        load_pretrained(
            PaCaViT('tiny'), str(path), convert=convert_official_state_dict, may_reinit=lambda k: '.to_clusters.' in k
        )


def test_mmengine_checkpoints_load_with_weights_only(tmp_path):
    hub = MessageHub.get_instance('test-safe-load')
    hub.update_scalar('train/loss', 0.5)
    path = tmp_path / 'epoch_1.pth'
    torch.save(
        {
            'meta': {'epoch': 1, 'seed': torch.tensor(3).numpy()},
            'message_hub': hub.state_dict(),
            'state_dict': {'w': torch.ones(2)},
        },
        path,
    )
    checkpoint = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert isinstance(checkpoint['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert checkpoint['message_hub']['log_scalars']['train/loss'].current() == 0.5


class _Exploit:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_arbitrary_pickles_are_refused(tmp_path):
    marker = tmp_path / 'pwned'
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': exploit}, path)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert not marker.exists()


def test_getattr_in_checkpoints_is_limited_to_history_buffer(tmp_path):
    class Sneaky:  # HistoryBuffer is allowed, but only its statistics methods may be looked up
        def __reduce__(self):
            return (getattr, (HistoryBuffer, '__init__'))

    path = tmp_path / 'getattr.pth'
    torch.save({'x': Sneaky()}, path)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
