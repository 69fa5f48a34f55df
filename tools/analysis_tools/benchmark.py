"""Latency, throughput and peak memory of backbones or full models, several resolutions and models in one run.

    # PaCa-ViT against mmdet's own PVTv2 and Swin backbones, three resolutions, GPU fp16
    python tools/analysis_tools/benchmark.py paca-tiny pvtv2-b1 paca-small pvtv2-b2 swin-t \
        --shapes 224 512 800x1280 --device cuda --dtype fp16 --plot latency.png
    # a whole segmentor or detector from its config (mmseg / mmdet "tensor" mode), or only its backbone
    python tools/analysis_tools/benchmark.py \
        configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py --shapes 512
    python tools/analysis_tools/benchmark.py configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py --backbone-only
    # a timm classifier
    python tools/analysis_tools/benchmark.py timm:paca_small --shapes 224 --batch-size 64
    # training steps (forward, backward, AdamW step) of a backbone, with activation checkpointing
    python tools/analysis_tools/benchmark.py paca-small --train --with-cp --shapes 512 800x1280

MODEL is a preset backbone name (see --list; every family's arch table gives presets, e.g. paca-small,
next to mmdet's PVTv2, Swin and ResNet), a det/seg config file, or timm:NAME. Latency is the median of
--iters timed passes after --warmup ones (CUDA events on GPUs), ± half the range; throughput is batch /
median latency. A pass is a forward pass without gradients, or with --train a whole training step of a
backbone or timm classifier (the loss is the mean of the output maps, or cross entropy against random
classes; AdamW; gradients freed after each step). Peak memory is torch's peak allocated memory: on GPUs
from torch.cuda, on CPUs from torch's allocation events in one extra, profiled pass (the tensors alive at
its start plus the largest rise during it; the rise is printed too). On CPUs the peak resident set size of
the process during the timed passes is printed as well (Linux; it includes Python and the libraries, about
850 MiB). fp16 / bf16 run under torch.autocast. Weights are random (no checkpoint needed); speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import mmcluster  # noqa: F401  (registers the models)
from mmcluster.apis import tensor_forward
from mmcluster.utils.benchmark import (
    DTYPES,
    backbone_presets,
    build_named_model,
    describe_preset,
    format_table,
    measure,
    measure_train,
    plot,
    training_loss,
)


def parse_shape(text: str) -> tuple[int, int]:
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'a shape is SIZE or HxW, got {text!r}')
    return (int(parts[0]), int(parts[-1]))


def build(spec: str, backbone_only: bool, with_cp: bool = False):
    """(display name, module, forward function, kind) for a MODEL argument."""
    name, model, kind = build_named_model(spec, backbone_only, with_cp)
    return name, model, tensor_forward(model, kind) if kind in ('mmdet', 'mmseg') else model, kind


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', help='preset backbones, config files or timm:NAME')
    parser.add_argument('--shapes', nargs='+', type=parse_shape, default=[(224, 224)], help='SIZE or HxW, several')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', nargs='+', choices=sorted(DTYPES), default=['fp32'])
    parser.add_argument('--warmup', type=int, default=None, help='untimed passes first (default 5; --train: 1)')
    parser.add_argument('--iters', type=int, default=None, help='timed passes (default 20; --train: 3)')
    parser.add_argument(
        '--train',
        action='store_true',
        help='time training steps (forward, backward, AdamW step) of backbones / timm classifiers',
    )
    parser.add_argument(
        '--with-cp',
        action='store_true',
        help='activation checkpointing (backbones: with_cp=True; timm: set_grad_checkpointing)',
    )
    parser.add_argument('--backbone-only', action='store_true', help='with config files: only the backbone')
    parser.add_argument('--threads', type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument('--plot', help='write a latency plot (PNG) here')
    parser.add_argument('--json', help='write the measurements as JSON here')
    parser.add_argument('--list', action='store_true', help='list the preset backbones and exit')
    args = parser.parse_args(argv)
    if args.list:
        for name, cfg in backbone_presets().items():
            print(f'{name:20s} {describe_preset(cfg)}')
        return []
    if not args.models:
        parser.error('name at least one model (or --list)')
    warmup = args.warmup if args.warmup is not None else (1 if args.train else 5)
    iters = args.iters if args.iters is not None else (3 if args.train else 20)
    for option, value, minimum in (
        ('--batch-size', args.batch_size, 1),
        ('--warmup', warmup, 0),
        ('--iters', iters, 1),
        ('--threads', args.threads or 1, 1),
    ):
        if value < minimum:
            parser.error(f'{option} must be >= {minimum}, got {value}')
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for spec in args.models:
        try:
            name, model, forward, kind = build(spec, args.backbone_only, args.with_cp)
            loss_fn = training_loss(model, kind) if args.train else None
        except (ValueError, KeyError, FileNotFoundError) as error:
            parser.error(f'{spec}: {error}')
        for dtype in args.dtype:
            for height, width in args.shapes:
                if args.train:
                    row = measure_train(
                        name,
                        model,
                        loss_fn,
                        height,
                        width,
                        args.batch_size,
                        args.device,
                        dtype,
                        warmup,
                        iters,
                        with_cp=args.with_cp,
                    )
                else:
                    row = measure(
                        name, model, forward, height, width, args.batch_size, args.device, dtype, warmup, iters
                    )
                rows.append(row)
                print(
                    f'{row.model} {row.mode} {height}x{width} {dtype}: {row.latency_ms:.1f} ms',
                    file=sys.stderr,
                    flush=True,
                )
        del model, forward, loss_fn
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(args.device) if args.device.startswith('cuda') else 'cpu'
    print(f'torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}')
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return rows


if __name__ == '__main__':
    main()
