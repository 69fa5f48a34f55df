"""tools/train.py --resume is exact (RNGStateHook): training that stops (or is killed with SIGKILL) and is
resumed equals the uninterrupted run bit for bit on CPU; --resume in an empty work dir says so.

The runs of a test go in parallel, one thread each, which keeps the wall time low on 2 cores."""

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mmcluster.utils.checkpoint import safe_load
from tests.tools_helpers import DET_DEMO, SEG_DEMO, run, shapes_options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
VOLATILE = {'eta', 'time', 'data_time', 'memory'}  # log fields that depend on the machine, not on training


def seg_options(shapes_root, max_iters):
    """Batch 2, a checkpoint and a validation every 3 iterations, a log line every iteration."""
    return [
        '--cfg-options',
        *shapes_options(shapes_root, 'seg'),
        'train_dataloader.batch_size=2',
        'default_hooks.checkpoint.interval=3',
        'default_hooks.checkpoint.max_keep_ckpts=3',
        'train_cfg.val_interval=3',
        'default_hooks.logger.interval=1',
        f'train_cfg.max_iters={max_iters}',
    ]


def train_log(output):
    """{iteration: {field: value}} of the 'Iter(train) [i/n]' or 'Epoch(train) [e][i/n]' log lines, without
    the fields that measure time and memory."""
    lines = {}
    for match in re.finditer(r'(?:Iter|Epoch)\(train\)\s+(\[\d+\])?\s*\[\s*(\d+)/\d+\]\s+(.*)$', output, re.M):
        key = (match.group(1) or '') + match.group(2)
        fields = dict(re.findall(r'(\S+): (\S+)', match.group(3)))
        lines[key] = {k: v for k, v in fields.items() if k not in VOLATILE}
    return lines


def assert_same_training_state(straight, resumed):
    """Two checkpoints of the same iteration: every model tensor, the optimizer state, the schedulers and
    the loss history are equal, bit for bit."""
    assert straight['meta']['iter'] == resumed['meta']['iter'] and straight['meta']['epoch'] == resumed['meta']['epoch']
    a, b = straight['state_dict'], resumed['state_dict']
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f'{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}'
    for param_a, param_b in zip(straight['optimizer']['state'].values(), resumed['optimizer']['state'].values()):
        for name in param_a:
            assert torch.equal(torch.as_tensor(param_a[name]), torch.as_tensor(param_b[name])), name
    assert straight['param_schedulers'] == resumed['param_schedulers']
    loss_a = straight['message_hub']['log_scalars']['train/loss'].data[0]
    loss_b = resumed['message_hub']['log_scalars']['train/loss'].data[0]
    assert len(loss_a) == len(loss_b) and (loss_a == loss_b).all()


@pytest.fixture(scope='module')
def seg_runs(shapes_root, tmp_path_factory):
    """The segmentation demo, three ways, in parallel:
    straight: 6 iterations, started with --resume in an empty work dir;
    stopped:  3 iterations, then --resume to 6;
    killed:   a run that kills itself with SIGKILL in iteration 4 (after the checkpoint and validation at
              iteration 3), then --resume to 6."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ('straight', 'stopped', 'killed')}
    kill_config = dirs['killed'] / 'sigkill_at_4.py'
    kill_config.write_text(
        f"_base_ = ['{ROOT}/{SEG_DEMO}']\n"
        "custom_imports = dict(imports=['tests.tools.sigkill_hook'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='SigkillAfterIterHook', at_iter=4)]\n"
    )

    def straight():
        return [
            run(
                ['tools/train.py', SEG_DEMO, '--work-dir', dirs['straight'], '--resume', *seg_options(shapes_root, 6)],
                env=ENV,
            )
        ]

    def stopped():
        first = run(['tools/train.py', SEG_DEMO, '--work-dir', dirs['stopped'], *seg_options(shapes_root, 3)], env=ENV)
        return [
            first,
            run(
                ['tools/train.py', SEG_DEMO, '--work-dir', dirs['stopped'], '--resume', *seg_options(shapes_root, 6)],
                env=ENV,
            ),
        ]

    def killed():
        cmd = [
            sys.executable,
            'tools/train.py',
            kill_config,
            '--work-dir',
            dirs['killed'],
            *seg_options(shapes_root, 6),
        ]
        path = os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))  # finds tests.tools.sigkill_hook
        env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=path, **ENV)
        proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == -signal.SIGKILL, f'expected SIGKILL, got {proc.returncode}:\n{output[-4000:]}'
        return [
            output,
            run(
                ['tools/train.py', SEG_DEMO, '--work-dir', dirs['killed'], '--resume', *seg_options(shapes_root, 6)],
                env=ENV,
            ),
        ]

    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(fn) for name, fn in (('straight', straight), ('stopped', stopped), ('killed', killed))
        }
        outputs = {name: future.result() for name, future in futures.items()}
    return dirs, outputs


def test_resume_in_empty_work_dir_says_so_and_trains_from_scratch(seg_runs):
    dirs, outputs = seg_runs
    out = outputs['straight'][0]
    assert f'no checkpoint found in {dirs["straight"]}' in out and 'training starts from scratch' in out
    assert 'Auto resumed from the latest checkpoint None' not in out
    assert re.search(r'Iter\(train\)\s+\[1/6\]', out) and 'resumed epoch' not in out
    assert safe_load(dirs['straight'] / 'iter_6.pth')['meta']['iter'] == 6


def test_stop_and_resume_equals_the_straight_run(seg_runs):
    """Also what the former tests/test_tools.py::test_resume_continues_training checked: mmengine 0.10.7
    alone cannot load its own checkpoints with torch >= 2.6; training continues at iteration 4."""
    dirs, outputs = seg_runs
    first, resumed = outputs['stopped']
    checkpoint = safe_load(dirs['stopped'] / 'iter_3.pth')  # weights_only=True, mmcluster's allow-list
    assert checkpoint['meta']['iter'] == 3
    states = checkpoint['rng_state']
    assert states['world_size'] == 1 and len(states['ranks']) == 1 and states['sampler_seed'] == 0
    assert {'torch', 'numpy', 'random'} <= set(states['ranks'][0])
    assert 'resumed epoch: 0, iter: 3' in resumed
    assert 'skipping 3 batches by advancing the sampler only' in resumed
    assert re.search(r'Iter\(train\)\s+\[6/6\]', resumed) and not re.search(r'Iter\(train\)\s+\[[123]/6\]', resumed)
    straight_log, resumed_log = train_log(outputs['straight'][0]), train_log(resumed)
    assert set(resumed_log) == {'4', '5', '6'}
    for it in ('4', '5', '6'):
        assert any('loss' in k for k in resumed_log[it])
        assert resumed_log[it] == straight_log[it], it
    assert train_log(first) == {k: v for k, v in straight_log.items() if k in ('1', '2', '3')}
    final = safe_load(dirs['stopped'] / 'iter_6.pth')
    assert final['meta']['iter'] == 6
    assert_same_training_state(safe_load(dirs['straight'] / 'iter_6.pth'), final)
    assert len(final['message_hub']['log_scalars']['train/loss'].data[0]) == 6  # the history continued
    assert any(not torch.equal(v, checkpoint['state_dict'][k]) for k, v in final['state_dict'].items())


def test_sigkill_and_resume_equals_the_straight_run(seg_runs):
    dirs, outputs = seg_runs
    killed, resumed = outputs['killed']
    assert re.search(r'Iter\(train\)\s+\[3/6\]', killed) and not re.search(r'Iter\(train\)\s+\[4/6\]', killed)
    assert 'Auto resumed from the latest checkpoint' in resumed and 'iter_3.pth' in resumed
    straight_log, resumed_log = train_log(outputs['straight'][0]), train_log(resumed)
    assert set(resumed_log) == {'4', '5', '6'}
    assert all(resumed_log[it] == straight_log[it] for it in resumed_log)
    assert_same_training_state(safe_load(dirs['straight'] / 'iter_6.pth'), safe_load(dirs['killed'] / 'iter_6.pth'))


def test_epoch_based_resume_equals_the_straight_run(shapes_root, tmp_path):
    """Mask R-CNN (EpochBasedTrainLoop, DefaultSampler + mmdet's AspectRatioBatchSampler, torch's RNG in
    the RoI samplers): 2 epochs of 4 iterations, and 1 epoch + --resume + 1 epoch."""
    common = [
        '--cfg-options',
        *shapes_options(shapes_root, 'det'),
        'train_dataloader.dataset.indices=8',
        'train_dataloader.batch_size=2',
        'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=2',
        'default_hooks.logger.interval=1',
    ]
    straight_dir, resumed_dir = tmp_path / 'straight', tmp_path / 'resumed'

    def straight():
        return run(['tools/train.py', DET_DEMO, '--work-dir', straight_dir, *common, 'train_cfg.max_epochs=2'], env=ENV)

    def stopped():
        run(['tools/train.py', DET_DEMO, '--work-dir', resumed_dir, *common, 'train_cfg.max_epochs=1'], env=ENV)
        return run(
            ['tools/train.py', DET_DEMO, '--work-dir', resumed_dir, '--resume', *common, 'train_cfg.max_epochs=2'],
            env=ENV,
        )

    with ThreadPoolExecutor(2) as pool:
        straight_out, resumed_out = [f.result() for f in (pool.submit(straight), pool.submit(stopped))]
    assert 'resumed epoch: 1, iter: 4' in resumed_out and 'random generator states restored' in resumed_out
    resumed_log = train_log(resumed_out)
    assert set(resumed_log) == {'[2]1', '[2]2', '[2]3', '[2]4'}
    assert all(resumed_log[k] == train_log(straight_out)[k] for k in resumed_log)
    assert_same_training_state(safe_load(straight_dir / 'epoch_2.pth'), safe_load(resumed_dir / 'epoch_2.pth'))
