r"""Latency, throughput, FLOP rate and peak memory of backbones or full models, several resolutions and models
in one run.

    # PaCa-ViT against mmdet's own PVTv2 and Swin backbones, three resolutions, GPU fp16
    python tools/analysis_tools/benchmark.py paca-tiny pvtv2-b1 paca-small pvtv2-b2 swin-t \
        --shapes 224 512 800x1280 --device cuda --dtype fp16 --plot latency.png
    # PaCa-Small against Swin-T on a busy CPU: interleaved rounds, FLOP rates against the machine's GEMM rate
    python tools/analysis_tools/benchmark.py swin-t paca-small --shapes 224 --threads 2 --interleave --gemm-rate
    # eager against torch.compile (inductor), side by side
    python tools/analysis_tools/benchmark.py paca-small swin-t --shapes 224 --compile --interleave
    # a whole segmentor or detector from its config (mmseg / mmdet "tensor" mode), or only its backbone
    python tools/analysis_tools/benchmark.py \
        configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py --shapes 512
    python tools/analysis_tools/benchmark.py configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py --backbone-only
    # a timm classifier
    python tools/analysis_tools/benchmark.py timm:paca_small --shapes 224 --batch-size 64
    # training steps (forward, backward, AdamW step) of a backbone, with activation checkpointing
    python tools/analysis_tools/benchmark.py paca-small --train --with-cp --shapes 512 800x1280
    # whole training steps of a detector (synthetic boxes and masks), with and without checkpointing
    python tools/analysis_tools/benchmark.py configs/paca_vit/mask-rcnn_paca-small_fpn_1x_coco.py --train \
        --shapes 512 [--with-cp]

MODEL is a preset backbone name (see --list; every family's arch table gives presets, e.g. paca-small, next to
mmdet's PVTv2, Swin and ResNet), a det/seg config file, or timm:NAME. Latency is the median of --iters timed passes
after --warmup ones (CUDA events on GPUs), ± half the range; throughput is batch / median latency; "× first" is the
latency over that of the first model named, at the same input, dtype and mode, and with more than one input size
"× first input" the latency over the same model's at the first size given (e.g. the time growth from 800x1280 to
1600x2560). With --interleave both also come per round: the median and the quartiles of each round's latency over
the reference's in the same round ("× first, per round", "× first input, per round"), which a slow spell of a
shared machine moves less than the ratio of medians of passes timed apart. A pass is a forward pass without
gradients, or with --train a whole training step: of a backbone or timm classifier, the loss is the mean of the
output maps, or cross entropy against random classes; of a det/seg config, the model's own losses on one synthetic
batch (random uint8 images; a few random boxes, labels and box masks, or a random semantic map), data preprocessor
included, as mmengine's train_step runs it. AdamW; gradients freed after each step; a first step whose loss is not
finite is an error. (UperNet's pyramid pooling normalises 1x1 maps with BatchNorm: train it with --batch-size 2 or
more.) With --compile each model's forward is also run as torch.compile(forward, fullgraph=True, dynamic=False)
(inductor; one static graph per shape and dtype): the first, compiling call is an untimed warm-up pass and a
recompilation during the timed passes is an error; "× eager" is its latency over the eager pass's.

Peak memory is torch's peak allocated memory: on GPUs from torch.cuda, on CPUs from torch's allocation
events in one extra, profiled pass (the tensors alive at its start, optimizer state included, plus the
largest rise during it; the rise is printed too). On CPUs the peak resident set size of the process during
the timed passes is printed as well (Linux; it includes Python and the libraries, about 850 MiB; not with
--interleave, where it is not per model). fp16 / bf16 run under torch.autocast. Weights are random (no
checkpoint needed); speed does not depend on them. On CPUs the header names the memory allocator's settings
in the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES, LD_PRELOAD, ...): at
detection resolutions they change latencies a lot (docs/benchmarks.md), so compare runs made with the same.

--gemm-rate measures the machine's fp32 GEMM rate before and after the timed passes: the faster of torch's GEMM
paths (torch.mm, and on CPUs also oneDNN's matmul, which can be twice as fast as torch.mm's MKL on AMD CPUs), each
on two random 2048x2048 fp32 matrices, one untimed product, then the median of 5 timed ones, as 2 * 2048^3 FLOPs
(CPUs: at the --threads count); of the two measurements the faster (a slow spell of a shared machine during one
would raise every share of the rate). The header names the CPU (model name, family and model numbers).
Each row then gets the FLOPs of one pass (torch.utils.flop_counter.FlopCounterMode in one extra pass:
2 FLOPs a multiply-add of matrix products, convolutions and attention; with --train forward and backward
of the whole step, a checkpointed forward's recomputation included), the achieved GFLOP/s (FLOPs / median
latency) and that as a share of the GEMM rate. Two of torch's formulas are corrected: the CPU's fused
attention kernels (none) and the backward of grouped convolutions (counted groups times over). A detector's
RoI heads do as much work as it samples proposals: its count is that of the one counted step.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional

import torch

import mmcluster  # noqa: F401  (registers the models)
from mmcluster.apis import tensor_forward
from mmcluster.utils.benchmark import (
    DTYPES,
    Bench,
    Measurement,
    add_first_ratios,
    allocator_settings,
    backbone_presets,
    build_named_model,
    config_train_bench,
    cpu_description,
    describe_preset,
    format_table,
    gemm_rates,
    inference_benches,
    measure_bench,
    measure_interleaved,
    parse_shape,
    plot,
    set_gemm_rate,
    train_bench,
    training_loss,
)

GEMM_SIZE, GEMM_REPEATS = 2048, 5


def build(spec: str, backbone_only: bool, with_cp: bool = False):
    """(display name, module, forward function, kind) for a MODEL argument."""
    name, model, kind = build_named_model(spec, backbone_only, with_cp)
    return name, model, tensor_forward(model, kind) if kind in ('mmdet', 'mmseg') else model, kind


def make_benches(args: argparse.Namespace, name: str, model, forward: Callable, kind: str) -> list[Bench]:
    """The model's benches: every dtype and shape (and, with --compile, eager then compiled)."""
    loss_fn = training_loss(model, kind) if args.train and kind in ('backbone', 'timm') else None
    benches = []
    for dtype in args.dtype:
        for height, width in args.shapes:
            common = (height, width, args.batch_size, args.device, dtype)
            if args.train and loss_fn is None:
                benches.append(config_train_bench(name, model, kind, *common, with_cp=args.with_cp))
            elif args.train:
                benches.append(train_bench(name, model, loss_fn, *common, with_cp=args.with_cp))
            else:
                benches += inference_benches(name, model, forward, *common, compiled=args.compile)
    return benches


def report(row: Measurement) -> None:
    print(
        f'{row.model} {row.mode_label} {row.height}x{row.width} {row.dtype}: {row.latency_ms:.1f} ms',
        file=sys.stderr,
        flush=True,
    )


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', help='preset backbones, config files or timm:NAME')
    parser.add_argument('--shapes', nargs='+', type=parse_shape, default=[(224, 224)], help='SIZE or HxW, several')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', nargs='+', choices=sorted(DTYPES), default=['fp32'])
    parser.add_argument(
        '--warmup',
        type=int,
        default=None,
        help='untimed passes first, per model, shape and dtype (default 5; --train: 1). --train and --compile '
        'always run at least one (AdamW state; compiling)',
    )
    parser.add_argument('--iters', type=int, default=None, help='timed passes (default 20; --train: 3)')
    parser.add_argument(
        '--interleave',
        action='store_true',
        help='build every model first, warm each up, then time in rounds that run every model, shape and dtype '
        'once each, so that machine noise hits all alike (default: one model after the other)',
    )
    parser.add_argument(
        '--gemm-rate',
        action='store_true',
        help="measure the machine's fp32 GEMM rate and report each pass's GFLOP (FlopCounterMode; --train: "
        'forward and backward of the whole step), achieved GFLOP/s and their share of the GEMM rate',
    )
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also time torch.compile(forward, fullgraph=True) (inductor) next to eager, with its latency over '
        "eager's; compile time is excluded (the first, untimed call compiles); a model that does not compile "
        'in one graph is an error. Inference only',
    )
    parser.add_argument(
        '--train',
        action='store_true',
        help='time training steps (forward, backward, AdamW step) of backbones, timm classifiers or det/seg '
        'configs (on a synthetic batch)',
    )
    parser.add_argument(
        '--with-cp',
        action='store_true',
        help="activation checkpointing (backbones and configs' backbones: with_cp=True; timm: set_grad_checkpointing)",
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
    if args.compile and args.train:
        parser.error('--compile times inference passes; it cannot be combined with --train')
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
    rates = gemm_rates(args.device, GEMM_SIZE, GEMM_REPEATS) if args.gemm_rate else {}
    gemm: Optional[float] = max(rates.values()) if rates else None

    rows: list[Measurement] = []
    waiting: list[Bench] = []  # --interleave: every model's benches, timed together at the end
    for spec in args.models:
        try:
            name, model, forward, kind = build(spec, args.backbone_only, args.with_cp)
            benches = make_benches(args, name, model, forward, kind)
        except (ValueError, KeyError, FileNotFoundError) as error:
            parser.error(f'{spec}: {error}')
        if args.interleave:
            waiting += benches
            continue
        for bench in benches:
            rows.append(measure_bench(bench, warmup, iters, gemm))
            report(rows[-1])
        del model, forward, benches, bench
        if args.compile:
            torch.compiler.reset()
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    if waiting:
        rows = measure_interleaved(waiting, warmup, iters, gemm)
        for row in rows:
            report(row)
    add_first_ratios(rows)
    if rates:
        # again after the timed passes: a slow spell of a shared machine during one measurement would lower the
        # rate, and raise every share of it (on the Zen 4 machine of docs/benchmarks.md once to 107 of ~200 GFLOP/s)
        after = gemm_rates(args.device, GEMM_SIZE, GEMM_REPEATS)
        rates = {name: max(rate, after[name]) for name, rate in rates.items()}
        gemm = max(rates.values())
        for row in rows:
            if row.gflops is not None:
                set_gemm_rate(row, gemm)
    on_gpu = args.device.startswith('cuda')
    device = torch.cuda.get_device_name(args.device) if on_gpu else f'cpu ({cpu_description()})'
    header = f'torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}'
    if not on_gpu:
        header += f', allocator: {allocator_settings()}'
    if gemm is not None:
        paths = ', '.join(f'{name} {rate:.1f}' for name, rate in rates.items())
        header += (
            f', fp32 GEMM rate {gemm:.1f} GFLOP/s (the fastest of {paths}; {GEMM_SIZE}x{GEMM_SIZE}, '
            f'median of {GEMM_REPEATS}, the faster of a measurement before and one after the timed passes)'
        )
    print(header)
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return rows


if __name__ == '__main__':
    main()
