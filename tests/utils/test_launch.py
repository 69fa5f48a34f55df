"""Process-group teardown at the end of tools/train.py and tools/test.py."""

import gc
import weakref
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mmcluster.utils.launch import destroy_process_group


def test_destroy_process_group_ends_the_run_s_group_and_is_a_no_op_without_one(tmp_path):
    destroy_process_group()  # no group: nothing to do
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    assert dist.is_initialized()
    destroy_process_group()
    assert not dist.is_initialized()
    destroy_process_group()


def test_the_group_is_freed_with_a_runner_dropped_before(tmp_path):
    """A runner's reference cycles hold its DDP model and, through it, the group and gloo's worker threads:
    destroy_process_group frees them while the interpreter is alive, not at its exit."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    runner = SimpleNamespace(model=DistributedDataParallel(torch.nn.Linear(2, 2)))
    runner.hooks = [runner]  # a reference cycle, as mmengine's runner has
    model = weakref.ref(runner.model)
    gc.disable()  # no automatic collection in between
    try:
        del runner
        assert model() is not None  # a cycle: only the garbage collector frees it
        destroy_process_group()
        assert model() is None and not dist.is_initialized()
    finally:
        gc.enable()
