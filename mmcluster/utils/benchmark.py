"""Latency, throughput and peak memory of backbones and full models, for inference and for training steps
(used by tools/analysis_tools/benchmark.py and check_amp.py).

Models are named as on the tools' command lines: a backbone preset, ``timm:NAME`` or an mmdet / mmseg
config file. The mmcluster presets are generated from the arch tables of the families' mm backbones
(:data:`mmcluster.models.backbones.MM_BACKBONES`): a backbone class with an ``arch_zoo`` table and a
``preset_prefix`` gets one preset ``<prefix>-<arch>`` per arch (``_`` written ``-``), e.g. ``paca-small`` and
``paca-small-teacher``; a new family gets its presets by being listed there, without any change here.

Peak memory is torch's own: on GPUs ``torch.cuda.max_memory_allocated``; on CPUs the same quantity taken
from torch's allocator events (``torch.profiler`` with ``profile_memory=True``) during one extra, untimed
pass: the bytes of the tensors alive when the pass began (parameters, buffers, optimizer state, input)
plus the largest rise of allocated bytes during the pass. On CPUs the peak resident set size of the whole
process during the timed passes is reported as well (Linux).
"""

from __future__ import annotations

import os.path
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn

DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}

# Backbones built by name from mmdet's MODELS: mmdet's own, of similar size to PaCa-Tiny / Small / Base and
# SecViT (ImageNet-1k variants), for comparison in the same run, and mmcluster's SEC-Swin (mmdet's Swin with
# SECA in place of window attention, mmcluster/models/backbones/sec_swin.py).
REFERENCE_PRESETS: dict[str, dict] = {
    'pvtv2-b1': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[2, 2, 2, 2]),
    'pvtv2-b2': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[3, 4, 6, 3]),
    'pvtv2-b3': dict(type='PyramidVisionTransformerV2', embed_dims=64, num_layers=[3, 4, 18, 3]),
    'swin-t': dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    'swin-s': dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    'resnet50': dict(type='ResNet', depth=50),
    'sec-swin-t': dict(type='SECSwinTransformer', arch='tiny'),
    'sec-swin-s': dict(type='SECSwinTransformer', arch='small'),
}

# Presets that set more than an arch: (preset it modifies, extra backbone arguments). Kept for the names
# that docs and scripts use.
PRESET_VARIANTS: dict[str, tuple[str, dict]] = {
    'paca-small-mlp': ('paca-small', dict(clustering='mlp')),
    # SecViT's linear mode: clusters of 98 tokens (as the default counts give at 224x224) at any resolution
    'secvit-small-linear': ('secvit-small', dict(tokens_per_cluster=98)),
}


def family_presets(backbones: Optional[Iterable[type]] = None) -> dict[str, dict]:
    """``{'<prefix>-<arch>': dict(type=<class>, arch=<arch>)}`` for every mm backbone class with an
    ``arch_zoo`` (default: :data:`mmcluster.models.backbones.MM_BACKBONES`). The prefix is the class's
    ``preset_prefix``, else its ``family``."""
    if backbones is None:
        from mmcluster.models import backbones as backbone_module

        backbones = backbone_module.MM_BACKBONES
    presets: dict[str, dict] = {}
    for cls in backbones:
        zoo = getattr(cls, 'arch_zoo', None)
        if not zoo:
            continue
        prefix = getattr(cls, 'preset_prefix', None) or getattr(cls, 'family', None) or cls.__name__.lower()
        for arch in zoo:
            name = f'{prefix}-{arch}'.replace('_', '-')
            if name in presets:
                raise ValueError(
                    f'two backbones define the preset {name!r}: {presets[name]["type"].__name__} and {cls.__name__}'
                )
            presets[name] = dict(type=cls, arch=arch)
    return presets


def backbone_presets(backbones: Optional[Iterable[type]] = None) -> dict[str, dict]:
    """All presets: the families' (:func:`family_presets`), their variants (:data:`PRESET_VARIANTS`, where the
    preset they modify exists) and mmdet's reference backbones (:data:`REFERENCE_PRESETS`)."""
    presets = family_presets(backbones)
    for name, (base, extra) in PRESET_VARIANTS.items():
        if base in presets:
            presets[name] = dict(presets[base], **extra)
    for name, cfg in REFERENCE_PRESETS.items():
        presets.setdefault(name, dict(cfg))
    return presets


def describe_preset(cfg: dict) -> str:
    """A preset's config as text, with the backbone class by name."""
    items = [f'type={getattr(cfg["type"], "__name__", cfg["type"])}']
    items += [f'{k}={v!r}' for k, v in cfg.items() if k != 'type']
    return f'dict({", ".join(items)})'


def build_named_model(spec: str, backbone_only: bool = False, with_cp: bool = False) -> tuple[str, nn.Module, str]:
    """(display name, model, kind) for a model named on a tool's command line: a preset of
    :func:`backbone_presets` (kind ``'backbone'``), ``timm:NAME`` (``'timm'``), or an mmdet / mmseg config
    file (``'mmdet'`` / ``'mmseg'``; with ``backbone_only``, only its backbone, kind ``'backbone'``). Weights
    are random: no pretrained checkpoint is downloaded. ``with_cp`` turns on activation checkpointing
    (backbones: ``with_cp=True``; timm models: ``set_grad_checkpointing()``).

    Raises:
        ValueError: ``spec`` names no preset, timm model or config file.
    """
    from mmengine.registry import MODELS, init_default_scope

    if spec.startswith('timm:'):
        import timm

        name = spec[len('timm:') :]
        if not timm.is_model(name):
            raise ValueError(f'unknown timm model {name!r} (is the package that registers it imported?)')
        model = timm.create_model(name)
        if with_cp:
            model.set_grad_checkpointing(True)
        return spec, model, 'timm'
    if spec.endswith('.py'):
        from ..apis import load_config

        if not os.path.isfile(spec) and '::' not in spec:
            raise ValueError(f'config file {spec!r} not found')
        cfg = load_config(spec)  # also sets the config's default scope
        cfg.model.backbone.init_cfg = None
        if with_cp:
            cfg.model.backbone.with_cp = True
        name = os.path.splitext(os.path.basename(spec))[0]
        if backbone_only:
            return f'{name} (backbone)', MODELS.build(cfg.model.backbone), 'backbone'
        return name, MODELS.build(cfg.model), cfg.default_scope
    presets = backbone_presets()
    if spec not in presets:
        raise ValueError(f'unknown model {spec!r}: use a preset ({", ".join(presets)}), a config file, or timm:NAME')
    init_default_scope('mmdet')
    cfg = dict(presets[spec])
    if with_cp:
        cfg['with_cp'] = True
    return spec, MODELS.build(cfg), 'backbone'


def training_loss(model: nn.Module, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A loss of a batch of images for a training step of a ``'backbone'`` (the mean of every output map,
    summed) or a ``'timm'`` classifier (cross entropy against random classes)."""
    if kind == 'timm':

        def classifier_loss(x: torch.Tensor) -> torch.Tensor:
            target = torch.randint(0, max(model.num_classes, 1), (x.shape[0],), device=x.device)
            return nn.functional.cross_entropy(model(x).float(), target)

        return classifier_loss
    if kind == 'backbone':

        def backbone_loss(x: torch.Tensor) -> torch.Tensor:
            outs = model(x)
            outs = [outs] if isinstance(outs, torch.Tensor) else outs
            return sum(o.float().mean() for o in outs)

        return backbone_loss
    raise ValueError(
        f'training steps are timed for backbones and timm classifiers, not {kind!r} models '
        f"(a detector or segmentor needs annotations); use the config's backbone instead"
    )


@dataclass
class Measurement:
    model: str
    height: int
    width: int
    batch_size: int
    device: str
    dtype: str
    params_m: float
    latency_ms: float  # median over the timed iterations (a forward pass, or a whole training step)
    latency_spread_ms: float  # (max - min) / 2 of the timed iterations
    throughput: float  # images / s at the median latency
    peak_memory_mib: Optional[float]  # torch's peak allocated memory (see the module docstring)
    mode: str = 'inference'  # or 'train': forward, backward and an AdamW step
    with_cp: bool = False  # activation checkpointing on
    step_memory_mib: Optional[float] = None  # the rise of allocated memory above the pass's start
    latency_min_ms: Optional[float] = None  # the fastest timed pass (the least disturbed on a busy machine)
    peak_rss_mib: Optional[float] = None  # CPU: peak resident set of the whole process, timed passes

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
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storages counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != 'meta':
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


def cpu_allocation_peak(fn: Callable[[], object]) -> int:
    """Run ``fn()`` once and return the largest rise, in bytes, of the CPU memory that torch's allocator
    holds for tensors above what it held when ``fn`` began (from ``torch.profiler``'s allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU
        ]
    except AttributeError as error:  # another torch's profiler layout
        raise RuntimeError(
            f"torch {torch.__version__}: cannot read the profiler's allocation events ({error})"
        ) from None
    events.sort(key=lambda event: event[0])
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _check(dtype: str, warmup: int, iters: int) -> None:
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    if warmup < 0 or iters < 1:
        raise ValueError(f'need warmup >= 0 and iters >= 1, got {warmup}, {iters}')


def _time_passes(
    step: Callable[[], object], warmup: int, iters: int, device: str
) -> tuple[list[float], Optional[float], bool]:
    """Run ``step`` ``warmup`` times, then time it ``iters`` times. Returns the times (ms), the peak memory
    of the timed passes on CUDA (bytes; None on CPU) and the peak RSS of the process during them on the CPU
    (MiB; None on CUDA or where it cannot be read)."""
    cuda = device.startswith('cuda')
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_reset = not cuda and _reset_peak_rss()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            step()
            times.append((time.perf_counter() - start_s) * 1000)
    if cuda:
        return times, torch.cuda.max_memory_allocated(device), None
    return times, None, _read_peak_rss_mib() if rss_reset else None


def _memory(
    step: Callable[[], object],
    device: str,
    held: Callable[[], int],
    cuda_peak: Optional[int],
    cuda_start: Optional[int],
) -> tuple[float, float]:
    """(peak, rise above the start) in MiB: from the CUDA statistics, or one profiled pass on the CPU."""
    if device.startswith('cuda'):
        return cuda_peak / 2**20, (cuda_peak - cuda_start) / 2**20
    start = held()
    rise = cpu_allocation_peak(step)
    return (start + rise) / 2**20, rise / 2**20


def _result(
    name, model, height, width, batch_size, device, dtype, times, peak, rise, peak_rss, mode, with_cp
) -> Measurement:
    median = statistics.median(times)
    return Measurement(
        name,
        height,
        width,
        batch_size,
        device,
        dtype,
        sum(p.numel() for p in model.parameters()) / 1e6,
        median,
        (max(times) - min(times)) / 2,
        batch_size * 1000 / median,
        peak,
        mode=mode,
        with_cp=with_cp,
        step_memory_mib=rise,
        peak_rss_mib=peak_rss,
        latency_min_ms=min(times),
    )


def measure(
    name: str,
    model: nn.Module,
    forward: Callable[[torch.Tensor], object],
    height: int,
    width: int,
    batch_size: int = 1,
    device: str = 'cpu',
    dtype: str = 'fp32',
    warmup: int = 5,
    iters: int = 20,
) -> Measurement:
    """Time ``forward(images)`` on a (batch_size, 3, height, width) batch without gradients. fp16/bf16 use
    autocast."""
    _check(dtype, warmup, iters)
    model.to(device)
    model.eval()  # (some mmdet backbones return None from train())
    images = torch.randn(batch_size, 3, height, width, device=device)
    cuda = device.startswith('cuda')

    def step():
        autocast = torch.autocast(device.split(':')[0], dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None)
        with torch.no_grad(), autocast:
            forward(images)

    cuda_start = torch.cuda.memory_allocated(device) if cuda else None
    times, cuda_peak, peak_rss = _time_passes(step, warmup, iters, device)
    peak, rise = _memory(
        step, device, lambda: tensor_bytes([*model.parameters(), *model.buffers(), images]), cuda_peak, cuda_start
    )
    return _result(
        name, model, height, width, batch_size, device, dtype, times, peak, rise, peak_rss, 'inference', False
    )


def measure_train(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    height: int,
    width: int,
    batch_size: int = 1,
    device: str = 'cpu',
    dtype: str = 'fp32',
    warmup: int = 1,
    iters: int = 3,
    with_cp: bool = False,
    lr: float = 1e-4,
) -> Measurement:
    """Time training steps on a (batch_size, 3, height, width) batch: ``loss_fn(images)`` (see
    :func:`training_loss`), backward, an AdamW step, gradients freed (``zero_grad(set_to_none=True)``, as
    mmengine's optimizer wrapper). fp16 runs under autocast with a GradScaler, bf16 under autocast.

    The peak memory counts parameters, buffers, AdamW's state (created in the first step) and the input,
    plus the rise during a step (activations kept for backward, gradients, temporaries); ``step_memory_mib``
    is that rise alone, which is what activation checkpointing (``with_cp``, recorded here) reduces.
    """
    _check(dtype, warmup, iters)
    model.to(device)
    model.train()
    images = torch.randn(batch_size, 3, height, width, device=device)
    device_type = device.split(':')[0]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'fp16')

    def step():
        with torch.autocast(device_type, dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None):
            loss = loss_fn(images)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    if warmup == 0:  # the optimizer state must exist before memory is counted
        warmup = 1
    cuda_start = None
    if device.startswith('cuda'):
        step()
        warmup -= 1
        torch.cuda.synchronize(device)
        cuda_start = torch.cuda.memory_allocated(device)

    def held() -> int:
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return tensor_bytes([*model.parameters(), *model.buffers(), *state, images])

    times, cuda_peak, peak_rss = _time_passes(step, warmup, iters, device)
    peak, rise = _memory(step, device, held, cuda_peak, cuda_start)
    return _result(name, model, height, width, batch_size, device, dtype, times, peak, rise, peak_rss, 'train', with_cp)


def _mib(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.0f}'


def format_table(rows: Sequence[Measurement]) -> str:
    header = (
        'model',
        'mode',
        'input',
        'batch',
        'device',
        'dtype',
        'params (M)',
        'latency (ms)',
        'min (ms)',
        'images/s',
        'peak mem (MiB)',
        'rise in pass (MiB)',
        'peak RSS (MiB)',
    )
    lines = [header] + [
        (
            r.model,
            r.mode + (', with_cp' if r.with_cp else ''),
            f'{r.height}x{r.width}',
            str(r.batch_size),
            r.device,
            r.dtype,
            f'{r.params_m:.1f}',
            f'{r.latency_ms:.1f} ± {r.latency_spread_ms:.1f}',
            '-' if r.latency_min_ms is None else f'{r.latency_min_ms:.1f}',
            f'{r.throughput:.2f}',
            _mib(r.peak_memory_mib),
            _mib(r.step_memory_mib),
            _mib(r.peak_rss_mib),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ['| ' + ' | '.join(c.ljust(w) for c, w in zip(line, widths)) + ' |' for line in lines]
    out.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(out)


def plot(rows: Sequence[Measurement], out_file: str) -> None:
    """Latency against input pixels, one line per model (and dtype, and mode)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    series: dict[str, list[Measurement]] = {}
    for row in rows:
        mode = '' if row.mode == 'inference' else f', {row.mode}' + (' with_cp' if row.with_cp else '')
        series.setdefault(f'{row.model} ({row.dtype}{mode})', []).append(row)
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
