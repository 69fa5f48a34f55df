"""Process-group teardown at the end of tools/train.py and tools/test.py."""

import torch.distributed as dist

from mmcluster.utils.launch import destroy_process_group


def test_destroy_process_group_ends_the_run_s_group_and_is_a_no_op_without_one(tmp_path):
    destroy_process_group()  # no group: nothing to do
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    assert dist.is_initialized()
    destroy_process_group()
    assert not dist.is_initialized()
    destroy_process_group()
