"""The pieces of the exact resume, without training: generator states through a weights_only checkpoint,
advancing a sampler without loading data, the hook in our tools' configs, --resume in an empty work dir."""

import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.registry import HOOKS, DefaultScope
from mmengine.runner.loops import _InfiniteDataloaderIterator
from torch.utils.data import DataLoader

from mmcluster.engine import RNGStateHook, advance_sampler, get_rng_state, set_rng_state
from mmcluster.utils.checkpoint import safe_load
from mmcluster.utils.launch import add_rng_state_hook, load_run_config, resolve_auto_resume
from tests.tools_helpers import DET_DEMO, SEG_DEMO


def draws():
    return (torch.rand(5), np.random.randn(3), np.random.randint(0, 1 << 30, 4), random.random(), random.gauss(0, 1))


def assert_same_draws(a, b):
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[3:] == b[3:]


def test_generator_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn(1)  # numpy and random now hold a cached Gaussian: part of the state
    random.gauss(0, 1)
    torch.save({'rng_state': get_rng_state()}, tmp_path / 'ckpt.pth')
    expected = draws()
    assert not np.array_equal(draws()[1], expected[1])  # the generators moved on
    set_rng_state(safe_load(tmp_path / 'ckpt.pth')['rng_state'])  # torch.load(weights_only=True)
    assert_same_draws(draws(), expected)


class CountingDataset:
    """Items 0..6; counts how often the 'pipeline' (``__getitem__``) runs."""

    def __init__(self):
        self.loads = 0

    def __len__(self):
        return 7

    def __getitem__(self, index):
        self.loads += 1
        return index


def toy_loader(seed=5):
    dataset = CountingDataset()
    sampler = DefaultSampler(dataset, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=pseudo_collate, num_workers=0)


def test_advance_sampler_matches_fetching_across_dataloader_restarts(monkeypatch):
    """4 batches per pass: skipping 6 restarts the dataloader once (new epoch, new shuffle)."""
    monkeypatch.setattr('mmengine.runner.loops.time.sleep', lambda s: None)  # mmengine waits 2 s per restart
    fetched = _InfiniteDataloaderIterator(toy_loader())
    for _ in range(6):
        next(fetched)
    advanced = _InfiniteDataloaderIterator(toy_loader())
    advance_sampler(advanced, 6)
    assert advanced._dataloader.dataset.loads == 0 and fetched._dataloader.dataset.loads == 11  # 2+2+2+1, 2+2
    assert advanced._epoch == fetched._epoch == 1
    following = [next(fetched) for _ in range(4)]  # runs into the next restart, too
    assert [next(advanced) for _ in range(4)] == following
    assert following != [next(_InfiniteDataloaderIterator(toy_loader())) for _ in range(4)]


def test_our_tools_add_the_hook_once_and_both_scopes_build_it(tmp_path):
    cfg = load_run_config(SEG_DEMO, None, 'none', str(tmp_path))
    assert [h['type'] for h in cfg.custom_hooks].count('RNGStateHook') == 1
    assert not add_rng_state_hook(cfg)
    cfg = Config(dict(custom_hooks=[dict(type='mmengine.RNGStateHook'), dict(type='EMAHook')]))
    assert not add_rng_state_hook(cfg) and len(cfg.custom_hooks) == 2
    cfg = Config(dict(custom_hooks=[dict(type='EMAHook')]))
    assert add_rng_state_hook(cfg) and cfg.custom_hooks[-1] == dict(type='RNGStateHook')
    assert 'RNGStateHook' in [h['type'] for h in load_run_config(DET_DEMO, None, 'none', str(tmp_path)).custom_hooks]
    from mmdet.registry import HOOKS as MMDET_HOOKS
    from mmseg.registry import HOOKS as MMSEG_HOOKS

    for scope, registry in (('mmdet', MMDET_HOOKS), ('mmseg', MMSEG_HOOKS)):
        with DefaultScope.overwrite_default_scope(scope):
            assert isinstance(registry.build(dict(type='RNGStateHook')), RNGStateHook)
    assert HOOKS.get('RNGStateHook') is RNGStateHook  # mmengine's root registry


@pytest.mark.parametrize('has_checkpoint', [False, True])
def test_resume_in_a_work_dir_without_checkpoint_is_switched_off_with_a_message(tmp_path, has_checkpoint):
    if has_checkpoint:
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_3.pth'))
    cfg = Config(dict(work_dir=str(tmp_path), resume=True, load_from=None))
    note = resolve_auto_resume(cfg)
    if has_checkpoint:
        assert note is None and cfg.resume
    else:
        assert f'no checkpoint found in {tmp_path}' in note and 'training starts from scratch' in note
        assert cfg.resume is False
    cfg = Config(dict(work_dir=str(tmp_path), resume=True, load_from='given.pth'))  # --resume CKPT
    assert resolve_auto_resume(cfg) is None and cfg.resume
