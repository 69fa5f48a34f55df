"""Where the time of one forward pass goes: torch.profiler's operator table for a backbone preset, a det/seg
config or timm:NAME (the names of benchmark.py).

    python tools/analysis_tools/profile_model.py paca-small --shape 800x1280 --threads 2
    python tools/analysis_tools/profile_model.py swin-t --shape 800x1280 --threads 2 --by-shape --top 30
    # and the time of each stage (submodule names as in model.named_modules())
    python tools/analysis_tools/profile_model.py paca-small --shape 1600x2560 --threads 2 \
        --modules patch_embed stages.0 stages.1 stages.2 stages.3

The model runs --warmup untimed passes without gradients, then one profiled pass. The table lists the
operators by self time (time inside the operator, not its callees), with their share of the pass, the
number of calls and, with --by-shape, one row per input shape. With --modules, --passes more passes
without the profiler time the named submodules (wall clock from their forward's start to its end, summed
over their calls in a pass) and the whole pass; a second table gives the medians. Weights are random.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

import mmcluster  # noqa: F401  (registers the models)
from mmcluster.apis import tensor_forward
from mmcluster.utils.benchmark import allocator_settings, build_named_model, cpu_description, parse_shape


def operator_table(events, top: int) -> str:
    """A markdown table of the ``top`` operators by self CPU time, from ``profiler.key_averages()``."""
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    lines = ['| operator | input shapes | calls | self time (ms) | share |', '| --- | --- | --- | --- | --- |']
    for event in rows[:top]:
        shapes = str(event.input_shapes) if event.input_shapes else '-'
        lines.append(
            f'| `{event.key}` | {shapes} | {event.count} | {event.self_cpu_time_total / 1000:.1f} '
            f'| {100 * event.self_cpu_time_total / total:.1f}% |'
        )
    lines.append(f'| all operators | | {sum(e.count for e in rows)} | {total / 1000:.1f} | 100% |')
    return '\n'.join(lines)


def module_times(forward, model: torch.nn.Module, images: torch.Tensor, names: list[str], passes: int) -> str:
    """A markdown table of the median wall time per pass of the submodules ``names`` over ``passes`` passes,
    next to that of the whole pass (no gradients)."""
    modules = dict(model.named_modules())
    per_pass: dict[str, list[float]] = defaultdict(lambda: [0.0] * passes)
    calls: dict[str, int] = defaultdict(int)
    started: dict[str, float] = {}
    current = 0

    def hooks(name):
        def before(*_):
            started[name] = time.perf_counter()

        def after(*_):
            per_pass[name][current] += time.perf_counter() - started[name]
            calls[name] += 1

        return before, after

    handles = []
    for name in names:
        before, after = hooks(name)
        handles += [modules[name].register_forward_pre_hook(before), modules[name].register_forward_hook(after)]
    totals = []
    try:
        with torch.no_grad():
            for current in range(passes):
                start = time.perf_counter()
                forward(images)
                totals.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    total = statistics.median(totals)
    lines = ['| module | calls per pass | median (ms) | share of the pass |', '| --- | --- | --- | --- |']
    for name in names:
        median = statistics.median(per_pass[name])
        lines.append(f'| `{name}` | {calls[name] // passes} | {1000 * median:.1f} | {100 * median / total:.1f}% |')
    lines.append(f'| whole pass | 1 | {1000 * total:.1f} | 100% |')
    return '\n'.join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='a preset backbone, a config file or timm:NAME')
    parser.add_argument('--shape', type=parse_shape, default=(224, 224), help='SIZE or HxW')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--threads', type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument('--warmup', type=int, default=2, help='untimed passes before the profiled one')
    parser.add_argument('--top', type=int, default=20, help='rows of the table')
    parser.add_argument('--by-shape', action='store_true', help='one row per operator and input shape')
    parser.add_argument('--backbone-only', action='store_true', help='with config files: only the backbone')
    parser.add_argument('--modules', nargs='+', metavar='NAME', default=[], help='also time these submodules')
    parser.add_argument('--passes', type=int, default=5, help='timed passes with --modules')
    args = parser.parse_args(argv)
    for option, value, minimum in (
        ('--batch-size', args.batch_size, 1),
        ('--warmup', args.warmup, 0),
        ('--top', args.top, 1),
        ('--threads', args.threads or 1, 1),
        ('--passes', args.passes, 1),
    ):
        if value < minimum:
            parser.error(f'{option} must be >= {minimum}, got {value}')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        name, model, kind = build_named_model(args.model, args.backbone_only)
    except (ValueError, KeyError, FileNotFoundError) as error:
        parser.error(f'{args.model}: {error}')
    model.eval()
    unknown = [name for name in args.modules if name not in dict(model.named_modules())]
    if unknown:
        parser.error(f'--modules: {args.model} has no submodule {", ".join(map(repr, unknown))}')
    forward = tensor_forward(model, kind) if kind in ('mmdet', 'mmseg') else model
    images = torch.randn(args.batch_size, 3, *args.shape)
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(args.warmup):
            forward(images)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
            forward(images)
    table = operator_table(prof.key_averages(group_by_input_shape=args.by_shape), args.top)
    height, width = args.shape
    print(
        f'{name}, {height}x{width}, batch {args.batch_size}, torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads, CPU: {cpu_description()}, allocator: {allocator_settings()}'
    )
    print(table)
    if args.modules:
        times = module_times(forward, model, images, args.modules, args.passes)
        print(times)
        table = f'{table}\n\n{times}'
    return table


if __name__ == '__main__':
    main()
