"""Latency, throughput and peak memory of backbones or full models, several resolutions and models in one run.

    # PaCa-ViT against mmdet's own PVTv2 and Swin backbones, three resolutions, GPU fp16
    python tools/analysis_tools/benchmark.py paca-tiny pvtv2-b1 paca-small pvtv2-b2 swin-t \
        --shapes 224 512 800x1280 --device cuda --dtype fp16 --plot latency.png
    # a whole segmentor or detector from its config (mmseg / mmdet "tensor" mode), or only its backbone
    python tools/analysis_tools/benchmark.py configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py --shapes 512
    python tools/analysis_tools/benchmark.py configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py --backbone-only
    # a timm classifier
    python tools/analysis_tools/benchmark.py timm:paca_small --shapes 224 --batch-size 64

MODEL is a preset backbone name (see --list), a det/seg config file, or timm:NAME. Latency is the median
of --iters timed forward passes after --warmup ones (CUDA events on GPUs), ± half the range; throughput is
batch / median latency. Peak memory is torch's max allocated memory on GPUs, and the peak resident set
size of the process during the timed loop on CPUs (Linux). fp16 / bf16 run under torch.autocast. Weights
are random (no checkpoint needed); speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

import mmcluster  # noqa: E402,F401
from mmcluster.apis import tensor_forward  # noqa: E402
from mmcluster.utils.benchmark import (BACKBONE_PRESETS, DTYPES, build_named_model, format_table, measure,  # noqa: E402
                                      plot)


def parse_shape(text: str) -> tuple[int, int]:
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'a shape is SIZE or HxW, got {text!r}')
    return (int(parts[0]), int(parts[-1]))


def build(spec: str, backbone_only: bool):
    """(display name, module, forward function) for a MODEL argument."""
    name, model, kind = build_named_model(spec, backbone_only)
    return name, model, tensor_forward(model, kind) if kind in ('mmdet', 'mmseg') else model


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', help='preset backbones, config files or timm:NAME')
    parser.add_argument('--shapes', nargs='+', type=parse_shape, default=[(224, 224)], help='SIZE or HxW, several')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', nargs='+', choices=sorted(DTYPES), default=['fp32'])
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--backbone-only', action='store_true', help='with config files: only the backbone')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--plot', help='write a latency plot (PNG) here')
    parser.add_argument('--json', help='write the measurements as JSON here')
    parser.add_argument('--list', action='store_true', help='list the preset backbones and exit')
    args = parser.parse_args(argv)
    if args.list:
        for name, cfg in BACKBONE_PRESETS.items():
            print(f'{name:20s} {cfg}')
        return []
    if not args.models:
        parser.error('name at least one model (or --list)')
    if args.batch_size < 1:
        parser.error('--batch-size must be >= 1')
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for spec in args.models:
        name, model, forward = build(spec, args.backbone_only)
        for dtype in args.dtype:
            for height, width in args.shapes:
                row = measure(name, model, forward, height, width, args.batch_size, args.device, dtype,
                              args.warmup, args.iters)
                rows.append(row)
                print(f'{row.model} {height}x{width} {dtype}: {row.latency_ms:.1f} ms', file=sys.stderr, flush=True)
        del model
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    print(f'torch {torch.__version__}, device {torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"}'
          f', threads {torch.get_num_threads()}')
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return rows


if __name__ == '__main__':
    main()
