"""Checkpoint errors name the file and say what is wrong with it, without torch's advice to turn
weights_only off; a model that a checkpoint does not fit is an error that lists the keys."""

import argparse
import decimal
import pickle
import traceback

import pytest
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from mmcluster.utils.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    check_checkpoint_fits,
    load_checkpoint_file,
    safe_load,
)
from tests.tools_helpers import DET_DEMO

from .conftest import init_from


def _full_text(error: BaseException) -> str:
    """What the user sees: the whole traceback, chained exceptions included."""
    return ''.join(traceback.format_exception(error))


def _assert_no_weights_only_advice(error: BaseException) -> None:
    text = _full_text(error)
    assert 'weights_only=False' not in text and '`weights_only` set to `False`' not in text, text


@pytest.fixture
def good_bytes(tmp_path):
    path = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.randn(64, 64)}, 'meta': {'epoch': 3}}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    'kind,expected',
    [
        ('empty', 'is empty'),
        ('truncated', 'is truncated'),
        ('legacy_truncated', 'is truncated'),
        ('text', 'is not a PyTorch checkpoint'),
    ],
)
def test_unreadable_files_name_the_path_and_the_problem(kind, expected, tmp_path, good_bytes, paca):
    path = tmp_path / f'{kind}.pth'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        path.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif kind == 'legacy_truncated':
        torch.save({'w': torch.randn(64, 64)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
        legacy = (tmp_path / 'legacy.pth').read_bytes()
        path.write_bytes(legacy[: len(legacy) // 2])
    else:
        path.write_text('model weights are elsewhere\n')
    loaders = [
        lambda: load_checkpoint_file(path),
        lambda: safe_load(path),
        lambda: CheckpointLoader.load_checkpoint(str(path), map_location='cpu'),  # Runner's load_from/resume
        lambda: init_from(paca, path),
    ]
    for load in loaders:
        with pytest.raises(CheckpointError) as info:
            load()
        assert str(path) in str(info.value) and expected in str(info.value)
        assert not isinstance(info.value, (EOFError, pickle.UnpicklingError))  # what torch raises for these
        _assert_no_weights_only_advice(info.value)


def test_a_refused_global_is_named(tmp_path):
    path = tmp_path / 'decimal.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'lr': decimal.Decimal('0.1')}}, path)
    for load in (lambda: load_checkpoint_file(path), lambda: CheckpointLoader.load_checkpoint(str(path))):
        with pytest.raises(UnsafeCheckpointError) as info:
            load()
        message = str(info.value)
        assert str(path) in message and 'decimal.Decimal' in message and 'mmcluster refuses to unpickle' in message
        assert info.value.global_name == 'decimal.Decimal'
        _assert_no_weights_only_advice(info.value)


def test_training_arguments_of_timm_and_deit_scripts_load(tmp_path):
    """timm's train.py and DeiT-style main.py save `args` (an argparse.Namespace) in their checkpoints."""
    path = tmp_path / 'with_args.pth'
    torch.save({'model': {'w': torch.ones(1)}, 'args': argparse.Namespace(lr=0.1, model='secvit_small')}, path)
    loaded = load_checkpoint_file(path)
    assert loaded['args'].lr == 0.1 and loaded['args'].model == 'secvit_small'
    assert torch.equal(loaded['model']['w'], torch.ones(1))


def test_a_missing_file_is_named_and_never_skipped(tmp_path, paca):
    missing = tmp_path / 'nowhere' / 'paca_tiny.pth'
    for load in (
        lambda: load_checkpoint_file(missing),
        lambda: CheckpointLoader.load_checkpoint(str(missing)),
        lambda: init_from(paca, missing),
    ):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            load()


@pytest.fixture(scope='module')
def det_model():
    from mmengine.registry import MODELS

    from mmcluster.apis import load_config

    cfg = load_config(DET_DEMO)
    return cfg, MODELS.build(cfg.model)


def _wrong_detector_checkpoint(model, path):
    """The detector's own state dict with one tensor of another shape, one key dropped and one added."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state['roi_head.bbox_head.fc_cls.weight'] = torch.zeros(5, state['roi_head.bbox_head.fc_cls.weight'].shape[1])
    del state['neck.fpn_convs.0.conv.bias']
    state['roi_head.bbox_head.extra.weight'] = torch.zeros(1)
    torch.save({'state_dict': state, 'meta': {}}, path)


def test_check_checkpoint_fits_lists_every_kind_of_mismatch(det_model, tmp_path):
    _, model = det_model
    path = tmp_path / 'wrong.pth'
    _wrong_detector_checkpoint(model, path)
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(model, load_checkpoint_file(path), str(path))
    message = str(info.value)
    assert str(path) in message
    assert 'roi_head.bbox_head.fc_cls.weight (checkpoint (5, 256), model (4, 256))' in message
    assert 'missing in the checkpoint (1): neck.fpn_convs.0.conv.bias' in message
    assert 'unexpected in the checkpoint (1): roi_head.bbox_head.extra.weight' in message
    assert info.value.missing == ['neck.fpn_convs.0.conv.bias']
    # the model's own weights fit; a DataParallel 'module.' prefix is removed as mmengine does
    own = {f'module.{k}': v for k, v in model.state_dict().items()}
    assert list(check_checkpoint_fits(model, {'state_dict': own}, 'own')) == list(model.state_dict())


def test_build_model_stops_on_a_checkpoint_that_does_not_fit(det_model, tmp_path):
    from mmcluster.apis import build_model

    cfg, model = det_model
    path = tmp_path / 'wrong.pth'
    _wrong_detector_checkpoint(model, path)
    with pytest.raises(CheckpointMismatchError, match='roi_head.bbox_head.fc_cls.weight') as info:
        build_model(cfg, str(path))
    assert str(path) in str(info.value)
    right = tmp_path / 'right.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {'classes': ('a', 'b', 'c')}}}, right)
    built = build_model(cfg, str(right))
    assert built.dataset_meta['classes'] == ('a', 'b', 'c')
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in built.state_dict().items())


def test_prepare_image_names_a_file_that_is_not_an_image(det_model, tmp_path):
    from mmcluster.apis import prepare_image

    cfg, model = det_model
    model.cfg = cfg
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('not an image')
    with pytest.raises(ValueError, match=f'{not_image} is not an image'):
        prepare_image(model, str(not_image))
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        prepare_image(model, str(tmp_path / 'missing.jpg'))
