"""Evaluate a detector (mmdet) or segmentor (mmseg) checkpoint on its config's test set.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]
    tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [args]

CHECKPOINT is a local file, an http(s) URL (downloaded to torch hub's cache) or an mmengine scheme such as
``open-mmlab://``; it is loaded with ``weights_only=True`` (see mmcluster.utils.checkpoint) and must fit
the config's model exactly: shape mismatches, missing and unexpected keys stop the run with their list
(mmengine's own loading only warns and evaluates a half-loaded model). ``--launcher pytorch`` also works on
machines without GPUs. mmcluster is imported as the installed package (``tools/setup_env.sh`` installs it
editable in .venv).
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

import mmcluster  # noqa: F401  (registers models, makes checkpoint loading safe)
from mmcluster.utils.checkpoint import CheckpointError, check_checkpoint_fits
from mmcluster.utils.launch import destroy_process_group, load_run_config, setup_cpu_distributed


class StrictCheckpointHook(Hook):
    """Stops the run when the checkpoint that the Runner loads does not fit the model exactly.

    Runs in ``after_load_checkpoint``, which the Runner calls with the loaded checkpoint before copying it
    into the model (mmengine's ``load_state_dict(strict=False)``, which only warns), and on every rank."""

    priority = 'LOWEST'  # after hooks that rewrite the checkpoint (e.g. EMAHook)

    def __init__(self, source: str) -> None:
        self.source = source

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_checkpoint_fits(model, checkpoint, self.source)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a detector or segmentor checkpoint')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--work-dir', help='where the evaluation log goes (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--show-dir', help='draw predictions of every test image into this directory')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, e.g. test_dataloader.batch_size=4'
    )
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_visualization(cfg: Config, show_dir: str) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show-dir needs a `visualization` hook in default_hooks')
    hook['draw'] = True
    if cfg.get('default_scope') == 'mmdet':
        hook['test_out_dir'] = osp.abspath(show_dir)
    else:
        cfg.visualizer['save_dir'] = show_dir
        hook['interval'] = 1


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_run_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    setup_cpu_distributed(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(StrictCheckpointHook(args.checkpoint), priority='LOWEST')
    metrics = runner.test()
    del runner  # its model holds the process group: freed with it (destroy_process_group)
    destroy_process_group()
    print('metrics:', json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))


if __name__ == '__main__':
    try:
        main()
    except (CheckpointError, FileNotFoundError) as error:  # messages that say it all: no traceback
        sys.exit(f'{sys.argv[0]}: error: {error}')
