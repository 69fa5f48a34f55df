"""Launch helpers for tools/train.py and tools/test.py where the OpenMMLab stack breaks."""

from __future__ import annotations

import gc
import os
from typing import Any, Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

from .. import engine  # noqa: F401  (registers RNGStateHook)

AMP_DTYPES = ('float16', 'bfloat16')
RNG_STATE_HOOK = 'RNGStateHook'


def load_run_config(config: str, cfg_options: Optional[dict], launcher: str, work_dir: Optional[str]) -> Config:
    """The config of a tools/train.py or tools/test.py run: ``--cfg-options`` merged, the launcher recorded,
    the work dir set (default ``./work_dirs/<config name>``), and :class:`~mmcluster.engine.RNGStateHook`
    in ``custom_hooks`` (for an exact ``--resume``)."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = os.path.join('./work_dirs', os.path.splitext(os.path.basename(config))[0])
    add_rng_state_hook(cfg)
    return cfg


def add_rng_state_hook(cfg: Config) -> bool:
    """Append ``dict(type='RNGStateHook')`` to ``cfg.custom_hooks`` unless it is there (under any scope
    prefix); returns whether it was added."""
    hooks = list(cfg.get('custom_hooks') or [])
    for hook in hooks:
        kind = hook.get('type') if isinstance(hook, dict) else hook
        name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
        if name.split('.')[-1] == RNG_STATE_HOOK:
            return False
    hooks.append(dict(type=RNG_STATE_HOOK))
    cfg.custom_hooks = hooks
    return True


def resolve_auto_resume(cfg: Config) -> Optional[str]:
    """``--resume`` without a checkpoint (``cfg.resume`` true, ``cfg.load_from`` None) resumes from the
    checkpoint named in ``WORK_DIR/last_checkpoint`` (mmengine's ``find_latest_checkpoint``). When that
    file does not exist, this switches resuming off (mmengine would log "Auto resumed from the latest
    checkpoint None" and start from scratch) and returns a message saying so, for the caller to log once
    the runner's logger exists. Returns None otherwise."""
    if not cfg.get('resume') or cfg.get('load_from') is not None:
        return None
    if os.path.isfile(os.path.join(cfg.work_dir, 'last_checkpoint')):  # what mmengine's find_latest_checkpoint reads
        return None
    cfg.resume = False
    return (
        f'--resume: no checkpoint found in {cfg.work_dir} (no last_checkpoint file naming one); '
        'training starts from scratch'
    )


def setup_cpu_distributed(cfg: Config, launcher: str) -> bool:
    """Make ``--launcher pytorch`` work on machines without GPUs.

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and fails without a GPU. When
    torchrun started us on such a machine this initialises a gloo process group first (mmengine then
    skips its own initialisation), wraps the model in DDP without device ids, and replaces SyncBN (which
    needs GPUs) with BN. Returns whether it did so.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return False
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher pytorch needs torchrun (tools/dist_train.sh); environment lacks {missing}')
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']), world_size=int(os.environ['WORLD_SIZE'])
        )
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    replaced = replace_norm_type(cfg.model, 'SyncBN', 'BN')
    if replaced:
        print_log(f'CPU distributed run (gloo): replaced SyncBN by BN in {replaced} places', logger='current')
    return True


def destroy_process_group() -> None:
    """End the run's default process group, if any, while the interpreter is fully alive (mmengine 0.10.7
    leaves it to the interpreter's exit); call it after dropping the runner.

    The group lives on as long as anything holds it, the runner's DDP model included, and gloo's worker
    threads with it. A worker that frees the work of a collective whose tensors Python also referenced (the
    last one of a run is the validation's ``broadcast_object_list``, a few ms before exit) takes the GIL;
    during interpreter finalization that ends the thread inside a destructor, and the process aborts
    ("terminate called without an active exception"; pytorch/pytorch#190489). That happened in 5 of 39
    two-process CPU runs of the demo segmentor, after all their work, and in none of 30 since: the group is
    destroyed, then the garbage collector frees the runner's reference cycles, and with them the model and
    the group, whose destructor releases the GIL and joins its workers now, not at exit."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
        gc.collect()


def replace_norm_type(node: Any, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in every norm config dict inside ``node``; returns the count."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += replace_norm_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += replace_norm_type(value, old, new)
    return count


def enable_amp(cfg: Config, dtype: Optional[str] = None) -> None:
    """Switch the config's optimizer wrapper to mmengine's AmpOptimWrapper (dynamic loss scale)."""
    if dtype is not None and dtype not in AMP_DTYPES:
        raise ValueError(f'--amp-dtype must be one of {AMP_DTYPES}, got {dtype!r}')
    optim_wrapper = cfg.optim_wrapper
    if optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        return
    if optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise ValueError(f'--amp needs an OptimWrapper config, got {optim_wrapper.type}')
    optim_wrapper.type = 'AmpOptimWrapper'
    optim_wrapper.setdefault('loss_scale', 'dynamic')
    if dtype is not None:
        optim_wrapper.dtype = dtype
