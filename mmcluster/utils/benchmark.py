"""Latency, throughput and peak memory of backbones and full models (used by tools/analysis_tools/benchmark.py)."""
from __future__ import annotations

import os.path
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}

# Backbones to compare in the same run, as mmdet/mmcluster backbone configs (ImageNet-1k variants of similar
# size to PaCa-Tiny / Small / Base).
BACKBONE_PRESETS: dict[str, dict] = {
    'paca-tiny': dict(type='PaCaViT', arch='tiny'),
    'paca-small': dict(type='PaCaViT', arch='small'),
    'paca-base': dict(type='PaCaViT', arch='base'),
    'paca-small-mlp': dict(type='PaCaViT', arch='small', clustering='mlp'),
    'paca-small-teacher': dict(type='PaCaViT', arch='small_teacher'),
    'paca-base-teacher': dict(type='PaCaViT', arch='base_teacher'),
    'pvtv2-b1': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[2, 2, 2, 2]),
    'pvtv2-b2': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[3, 4, 6, 3]),
    'pvtv2-b3': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[3, 4, 18, 3]),
    'swin-t': dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    'swin-s': dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    'resnet50': dict(type='ResNet', depth=50),
}


def build_named_model(spec: str, backbone_only: bool = False) -> tuple[str, nn.Module, str]:
    """(display name, model, kind) for a model named on a tool's command line: a preset of
    :data:`BACKBONE_PRESETS` (kind ``'backbone'``), ``timm:NAME`` (``'timm'``), or an mmdet / mmseg config
    file (``'mmdet'`` / ``'mmseg'``; with ``backbone_only``, only its backbone, kind ``'backbone'``). Weights
    are random: no pretrained checkpoint is downloaded."""
    from mmengine.registry import MODELS, init_default_scope
    if spec.startswith('timm:'):
        import timm
        return spec, timm.create_model(spec[len('timm:'):]), 'timm'
    if spec.endswith('.py'):
        from ..apis import load_config
        cfg = load_config(spec)  # also sets the config's default scope
        cfg.model.backbone.init_cfg = None
        name = os.path.splitext(os.path.basename(spec))[0]
        if backbone_only:
            return f'{name} (backbone)', MODELS.build(cfg.model.backbone), 'backbone'
        return name, MODELS.build(cfg.model), cfg.default_scope
    if spec not in BACKBONE_PRESETS:
        raise SystemExit(f'unknown model {spec!r}: use a preset ({", ".join(BACKBONE_PRESETS)}), a config file, '
                         f'or timm:NAME')
    init_default_scope('mmdet')
    return spec, MODELS.build(dict(BACKBONE_PRESETS[spec])), 'backbone'


@dataclass
class Measurement:
    model: str
    height: int
    width: int
    batch_size: int
    device: str
    dtype: str
    params_m: float
    latency_ms: float  # median over the timed iterations
    latency_spread_ms: float  # (max - min) / 2 of the timed iterations
    throughput: float  # images / s at the median latency
    peak_memory_mib: Optional[float]  # GPU: max allocated; CPU: peak resident set during the timed loop

    def as_dict(self) -> dict:
        return asdict(self)


def _read_peak_rss_mib() -> Optional[float]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


@torch.no_grad()
def measure(name: str, model: nn.Module, forward: Callable[[torch.Tensor], object], height: int, width: int,
            batch_size: int = 1, device: str = 'cpu', dtype: str = 'fp32', warmup: int = 5,
            iters: int = 20) -> Measurement:
    """Time ``forward(images)`` on a (batch_size, 3, height, width) batch. fp16/bf16 use autocast."""
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    if warmup < 0 or iters < 1:
        raise ValueError(f'need warmup >= 0 and iters >= 1, got {warmup}, {iters}')
    model.to(device)
    model.eval()  # (some mmdet backbones return None from train())
    images = torch.randn(batch_size, 3, height, width, device=device)
    cuda = device.startswith('cuda')
    autocast = torch.autocast(device_type='cuda' if cuda else 'cpu', dtype=DTYPES[dtype],
                              enabled=DTYPES[dtype] is not None)
    with autocast:
        for _ in range(warmup):
            forward(images)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        rss_reset = not cuda and _reset_peak_rss()
        times = []
        for _ in range(iters):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward(images)
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end))
            else:
                start_s = time.perf_counter()
                forward(images)
                times.append((time.perf_counter() - start_s) * 1000)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak = _read_peak_rss_mib() if rss_reset else None
    median = statistics.median(times)
    return Measurement(name, height, width, batch_size, device, dtype,
                       sum(p.numel() for p in model.parameters()) / 1e6, median,
                       (max(times) - min(times)) / 2, batch_size * 1000 / median, peak)


def format_table(rows: list[Measurement]) -> str:
    header = ('model', 'input', 'batch', 'device', 'dtype', 'params (M)', 'latency (ms)', 'images/s', 'peak mem (MiB)')
    lines = [header] + [(r.model, f'{r.height}x{r.width}', str(r.batch_size), r.device, r.dtype, f'{r.params_m:.1f}',
                         f'{r.latency_ms:.1f} ± {r.latency_spread_ms:.1f}', f'{r.throughput:.1f}',
                         '-' if r.peak_memory_mib is None else f'{r.peak_memory_mib:.0f}') for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ['| ' + ' | '.join(c.ljust(w) for c, w in zip(line, widths)) + ' |' for line in lines]
    out.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(out)


def plot(rows: list[Measurement], out_file: str) -> None:
    """Latency against input pixels, one line per model (and dtype)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    series: dict[str, list[Measurement]] = {}
    for row in rows:
        series.setdefault(f'{row.model} ({row.dtype})', []).append(row)
    for label, points in series.items():
        points.sort(key=lambda r: r.height * r.width)
        axis.plot([r.height * r.width / 1e6 for r in points], [r.latency_ms for r in points], marker='o', label=label)
    axis.set_xlabel('input megapixels')
    axis.set_ylabel(f'latency (ms), batch {rows[0].batch_size}, {rows[0].device}')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
