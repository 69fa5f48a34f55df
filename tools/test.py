"""Evaluate a detector (mmdet) or segmentor (mmseg) checkpoint on its config's test set.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]
    tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [args]

Checkpoints are loaded with ``weights_only=True`` (see mmcluster.utils.checkpoint); ``--launcher pytorch``
also works on machines without GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmcluster  # noqa: E402,F401
from mmcluster.utils.launch import load_run_config, setup_cpu_distributed  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a detector or segmentor checkpoint')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--work-dir', help='where the evaluation log goes (default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--show-dir', help='draw predictions of every test image into this directory')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. test_dataloader.batch_size=4')
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
    metrics = runner.test()
    print('metrics:', json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))


if __name__ == '__main__':
    main()
