"""Train a detector (mmdet) or segmentor (mmseg) from a config, with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options k=v ...]
    tools/dist_train.sh CONFIG NUM_GPUS [args]      # also on machines without GPUs (gloo)

Differences from mmdet/mmseg's own tools/train.py:
* ``--resume`` works with torch >= 2.6 (mmengine 0.10.7 fails with UnpicklingError there): mmcluster
  loads checkpoints with ``weights_only=True`` and an allow-list of what mmengine checkpoints hold.
* ``--resume`` is exact: RNGStateHook (added to ``custom_hooks``) saves the random generator states in
  every checkpoint and restores them, so that a resumed run equals the uninterrupted one.
* ``--resume`` in a work dir without checkpoints says so and trains from scratch.
* ``--launcher pytorch`` works on machines without GPUs (gloo; SyncBN is replaced by BN).

mmcluster is imported as the installed package (``tools/setup_env.sh`` installs it editable in .venv).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import mmcluster  # noqa: F401  (registers models, makes checkpoint loading safe)
from mmcluster.utils.launch import (
    AMP_DTYPES,
    destroy_process_group,
    enable_amp,
    load_run_config,
    resolve_auto_resume,
    setup_cpu_distributed,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (AmpOptimWrapper)')
    parser.add_argument('--amp-dtype', choices=AMP_DTYPES, help='autocast dtype with --amp (default float16)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help="scale the lr by the actual batch size over the config's auto_scale_lr.base_batch_size",
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work dir if none is given',
    )
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, e.g. train_cfg.max_epochs=1'
    )
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.amp_dtype and not args.amp:
        parser.error('--amp-dtype needs --amp')
    return args


def build_config(args: argparse.Namespace) -> Config:
    cfg, _ = build_config_and_notes(args)
    return cfg


def build_config_and_notes(args: argparse.Namespace) -> tuple[Config, Optional[str]]:
    """The run's config, and a message to log once the runner exists (``--resume`` found nothing)."""
    cfg = load_run_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    if args.amp:
        enable_amp(cfg, args.amp_dtype)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    note = None
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
        note = resolve_auto_resume(cfg)
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint {args.resume} does not exist')
        cfg.resume = True
        cfg.load_from = args.resume
    setup_cpu_distributed(cfg, args.launcher)
    return cfg, note


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, note = build_config_and_notes(args)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else None
    if runner is None:
        from mmengine.registry import RUNNERS

        runner = RUNNERS.build(cfg)
    if note:
        runner.logger.warning(note)
    runner.train()
    del runner  # its model holds the process group: freed with it (destroy_process_group)
    destroy_process_group()


if __name__ == '__main__':
    main()
