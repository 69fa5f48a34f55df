"""Latency, throughput, FLOP rate and peak memory of backbones and full models, for inference (eager or
``torch.compile``\\ d) and for training steps (used by tools/analysis_tools/benchmark.py and check_amp.py).

Models are named as on the tools' command lines: a backbone preset, ``timm:NAME`` or an mmdet / mmseg
config file. The mmcluster presets are generated from the arch tables of the families' mm backbones
(:data:`mmcluster.models.backbones.MM_BACKBONES`): a backbone class with an ``arch_zoo`` table and a
``preset_prefix`` gets one preset ``<prefix>-<arch>`` per arch (``_`` written ``-``), e.g. ``paca-small`` and
``paca-small-teacher``; a new family gets its presets by being listed there, without any change here.

A :class:`Bench` is one timed pass made ready: a model at one input shape, dtype and mode (inference,
compiled inference, a training step of a backbone / classifier, or a whole mmdet / mmseg training step on
a synthetic batch). :func:`measure_bench` times benches one after the other; :func:`measure_interleaved`
times them in rounds, every bench once a round, so that machine noise falls on all of them alike.

Peak memory is torch's own: on GPUs ``torch.cuda.max_memory_allocated``; on CPUs the same quantity taken
from torch's allocator events (``torch.profiler`` with ``profile_memory=True``) during one extra, untimed
pass: the bytes of the tensors alive when the pass began (parameters, buffers, optimizer state, input)
plus the largest rise of allocated bytes during the pass. On CPUs the peak resident set size of the whole
process during the timed passes is reported as well (Linux; not when interleaved, as it is not per model).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of matrix
products, convolutions and ``scaled_dot_product_attention``, forward and backward; elementwise operations
are not counted). torch has no formula for the CPU's fused attention kernels and over-counts the backward
of grouped convolutions; :func:`count_flops` corrects both.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
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


def parse_shape(text: str) -> tuple[int, int]:
    """A tool's input-shape argument, ``SIZE`` or ``HxW``, as (height, width) (an argparse ``type``)."""
    import argparse

    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'a shape is SIZE or HxW, got {text!r}')
    return int(parts[0]), int(parts[-1])


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
    summed) or a ``'timm'`` classifier (cross entropy against random classes). Detectors and segmentors
    compute their own losses from annotations: see :func:`config_train_bench`."""
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
        f"training_loss is for 'backbone' and 'timm' models, not {kind!r}: "
        'a detector or segmentor is trained on annotations (config_train_bench)'
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
    compiled: bool = False  # torch.compile(fullgraph=True) of the forward pass
    vs_first: Optional[float] = None  # latency / the first model's at the same input, batch, dtype and mode
    vs_first_input: Optional[float] = None  # latency / the same model's at the first input (batch, dtype, mode)
    # --interleave: the timed passes in round order, and the per-round ratios' quartiles (q1, median, q3) of
    # vs_first and vs_first_input (add_first_ratios): each round's latency over the reference's in the same round
    round_times_ms: Optional[list[float]] = None
    vs_first_rounds: Optional[tuple[float, float, float]] = None
    vs_first_input_rounds: Optional[tuple[float, float, float]] = None
    vs_eager: Optional[float] = None  # compiled rows: latency / the same model's eager latency
    gflop: Optional[float] = None  # FLOPs of one pass (count_flops), in 1e9
    gflops: Optional[float] = None  # achieved: gflop / median latency in seconds
    gemm_rate_gflops: Optional[float] = None  # this machine's fp32 GEMM rate (the fastest of gemm_rates)
    gemm_fraction: Optional[float] = None  # gflops / gemm_rate_gflops

    @property
    def mode_label(self) -> str:
        """The mode as the table prints it, e.g. 'inference, compiled' or 'train, with_cp'."""
        return self.mode + (', compiled' if self.compiled else '') + (', with_cp' if self.with_cp else '')

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


# FLOPs


def _attention_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int], *args, **kwargs) -> int:
    """FLOPs of a fused attention kernel from its input shapes (..., L, E), as torch counts the CUDA
    kernels: the products Q K^T and (scores) V, 2 FLOPs a multiply-add; softmax and masks not counted."""
    return 2 * math.prod(query[:-2]) * query[-2] * key[-2] * (query[-1] + value[-1])


def _attention_backward_flops(
    grad_out: Sequence[int], query: Sequence[int], key: Sequence[int], value: Sequence[int], *args, **kwargs
) -> int:
    """FLOPs of a fused attention kernel's backward, as torch counts the CUDA ones: the scores recomputed,
    two products for the gradient of (scores) V and two for that of Q K^T."""
    return 2 * math.prod(query[:-2]) * query[-2] * key[-2] * (3 * query[-1] + 2 * value[-1])


def _conv_flops(x: Sequence[int], weight: Sequence[int], out: Sequence[int], transposed: bool) -> int:
    """FLOPs of a convolution, 2 a multiply-add: for every output point (input point if transposed), a
    product with the whole weight, whose shape (C_out, C_in / groups, *kernel) accounts for the groups."""
    return 2 * x[0] * math.prod((x if transposed else out)[2:]) * math.prod(weight)


def _conv_backward_flops(
    grad_out: Sequence[int],
    x: Sequence[int],
    weight: Sequence[int],
    bias: object,
    stride: object,
    padding: object,
    dilation: object,
    transposed: bool,
    output_padding: object,
    groups: int,
    output_mask: Sequence[bool],
    *args,
    **kwargs,
) -> int:
    """A convolution's backward: the input gradient and the weight gradient, where asked for, each as many
    FLOPs as the forward convolution. (torch's own formula counts the weight gradient of a grouped
    convolution ``groups`` times over, e.g. 96x for a depthwise convolution of 96 channels.)"""
    return (int(output_mask[0]) + int(output_mask[1])) * _conv_flops(x, weight, grad_out, transposed)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn()``, counted by ``torch.utils.flop_counter.FlopCounterMode`` (forward and,
    when ``fn`` runs one, backward passes), with two corrections to its formulas (torch 2.x): the CPU's
    fused attention kernels, which it has no formula for (``_scaled_dot_product_flash_attention_for_cpu``
    and its backward), are counted as it counts the CUDA ones, and the backward of grouped convolutions as
    that of the forward convolution (see :func:`_conv_backward_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .flops import ONEDNN_FLOP_FORMULAS

    aten = torch.ops.aten
    formulas = {
        aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
        aten.convolution_backward: _conv_backward_flops,
        **ONEDNN_FLOP_FORMULAS,
    }
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        fn()
    return counter.get_total_flops()


def _time_once(step: Callable[[], object], device: str) -> float:
    """Milliseconds of one ``step()``: CUDA events on GPUs, the wall clock on CPUs."""
    if device.startswith('cuda'):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    step()
    return (time.perf_counter() - start_s) * 1000


def gemm_rates(device: str = 'cpu', size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 matrix-product rates in GFLOP/s, one per GEMM path torch has on ``device``: on GPUs
    ``torch.mm`` (under torch's TF32 setting, off by default); on CPUs ``torch.mm`` (the BLAS, MKL in torch's
    x86 wheels) and, in builds with oneDNN, oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, which
    mmcluster's linear layers use in CPU inference where a probe measures it the faster one). Each: two random
    fp32 ``size`` x ``size`` matrices, one untimed product, then the median time of ``repeats`` timed ones,
    counted as ``2 * size**3`` FLOPs, at torch's current thread count. The two CPU paths can differ a lot: on an
    AMD Zen 5 CPU (family 26) MKL's GEMM ran at less than half of oneDNN's rate (``docs/benchmarks.md``), so the
    machine's rate is the faster one."""
    from ..models.layers.row_bands import ONEDNN_LINEAR

    if size < 1 or repeats < 1:
        raise ValueError(f'need size >= 1 and repeats >= 1, got size={size}, repeats={repeats}')
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    products = {'torch.mm': lambda: torch.mm(a, b)}
    if device == 'cpu' and ONEDNN_LINEAR is not None:
        products["oneDNN's matmul"] = lambda: ONEDNN_LINEAR(a, b, None, 'none', [], '')
    rates = {}
    for name, product in products.items():
        product()
        median_ms = statistics.median(_time_once(product, device) for _ in range(repeats))
        rates[name] = 2 * size**3 / (median_ms / 1000) / 1e9
    return rates


def cpu_description() -> str:
    """The CPU's model name, vendor family and model numbers and logical CPU count, from ``/proc/cpuinfo`` on
    Linux (e.g. ``AMD EPYC, family 26 model 2, 2 CPUs``): CPU latencies, and which GEMM path is faster, depend on
    the CPU generation, and virtual machines often report only the vendor's brand name."""
    fields: dict[str, str] = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if key in ('model name', 'cpu family', 'model') and key not in fields:
                    fields[key] = value.strip()
                if len(fields) == 3:  # the first CPU's entry is enough
                    break
    except OSError:
        pass
    name = fields.get('model name') or platform.processor() or 'unknown CPU'
    if 'cpu family' in fields and 'model' in fields:
        name += f', family {fields["cpu family"]} model {fields["model"]}'
    return f'{name}, {os.cpu_count()} CPUs'


# Environment variables that change how the C library's malloc (or a preloaded allocator) serves CPU tensors
ALLOCATOR_ENV = (
    'MALLOC_MMAP_THRESHOLD_',
    'MALLOC_TRIM_THRESHOLD_',
    'MALLOC_TOP_PAD_',
    'MALLOC_ARENA_MAX',
    'GLIBC_TUNABLES',
    'MALLOC_CONF',
    'LD_PRELOAD',
)


def allocator_settings(environ: Optional[dict] = None) -> str:
    """The CPU memory allocator's settings in the environment (:data:`ALLOCATOR_ENV`), for a benchmark's header.

    They change CPU latencies a lot at detection resolutions: with glibc's default settings every
    allocation of 32 MiB or more is a fresh ``mmap`` whose pages fault on their first write, so a model whose
    passes allocate large maps pays for every page again in every pass. ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` set high keep freed memory for reuse (figures in ``docs/benchmarks.md``)."""
    environ = os.environ if environ is None else environ
    settings = [f'{name}={environ[name]}' for name in ALLOCATOR_ENV if environ.get(name)]
    return ', '.join(settings) if settings else 'default malloc settings'


# Benches: one timed pass made ready


@dataclass(eq=False)
class Bench:
    """One pass ready to time: ``step()`` runs it once on its own batch; ``held()`` is the bytes of the
    tensors kept between passes (parameters, buffers, optimizer state, the batch)."""

    name: str
    model: nn.Module
    height: int
    width: int
    batch_size: int
    device: str
    dtype: str
    mode: str  # 'inference' or 'train'
    step: Callable[[], object]
    held: Callable[[], int]
    with_cp: bool = False
    eager: Optional[Bench] = None  # a compiled bench: the eager bench whose forward pass it compiles
    warmup_min: int = 0  # untimed passes needed whatever the warm-up asked for (optimizer state, compiling)
    flops: Optional[int] = None  # FLOPs of one pass, once counted
    measured: Optional[Measurement] = None  # its measurement, once measured

    @property
    def compiled(self) -> bool:
        return self.eager is not None


def _check(dtype: str, warmup: int = 0, iters: int = 1) -> None:
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    if warmup < 0 or iters < 1:
        raise ValueError(f'need warmup >= 0 and iters >= 1, got {warmup}, {iters}')


def _autocast(device: str, dtype: str) -> torch.autocast:
    return torch.autocast(device.split(':')[0], dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None)


def inference_benches(
    name: str,
    model: nn.Module,
    forward: Callable[[torch.Tensor], object],
    height: int,
    width: int,
    batch_size: int = 1,
    device: str = 'cpu',
    dtype: str = 'fp32',
    compiled: bool = False,
) -> list[Bench]:
    """``forward(images)`` without gradients on a random (batch_size, 3, height, width) batch (fp16 / bf16
    under autocast): the eager bench and, with ``compiled``, a second one on the same batch that runs
    ``torch.compile(forward, fullgraph=True, dynamic=False)`` (inductor, one static graph per shape and
    dtype; a graph break is an error). The compiled bench's first call compiles: it is never timed."""
    _check(dtype)
    model.to(device)
    model.eval()  # (some mmdet backbones return None from train())
    images = torch.randn(batch_size, 3, height, width, device=device)

    def runner(fn: Callable[[torch.Tensor], object]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad(), _autocast(device, dtype):
                fn(images)

        return step

    def held() -> int:
        return tensor_bytes([*model.parameters(), *model.buffers(), images])

    shared = (name, model, height, width, batch_size, device, dtype, 'inference')
    eager = Bench(*shared, runner(forward), held)
    if not compiled:
        return [eager]
    compiled_forward = torch.compile(forward, fullgraph=True, dynamic=False)
    return [eager, Bench(*shared, runner(compiled_forward), held, eager=eager, warmup_min=1)]


def _training_step(
    name: str,
    loss_fn: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> Callable[[], None]:
    """``loss_fn()``, backward, optimizer step, gradients freed (``zero_grad(set_to_none=True)``, as
    mmengine's OptimWrapper). Raises FloatingPointError naming ``name`` if the first loss is not finite."""
    checked = False

    def step() -> None:
        nonlocal checked
        loss = loss_fn()
        if not checked:
            if not torch.isfinite(loss).all():
                raise FloatingPointError(f'{name}: the loss of the first training step is {loss.tolist()}')
            checked = True
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def _optimizer(model: nn.Module, dtype: str, device: str, lr: float):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'fp16')

    def state() -> list[torch.Tensor]:
        return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]

    return optimizer, scaler, state


def train_bench(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    height: int,
    width: int,
    batch_size: int = 1,
    device: str = 'cpu',
    dtype: str = 'fp32',
    with_cp: bool = False,
    lr: float = 1e-4,
) -> Bench:
    """Training steps on a random (batch_size, 3, height, width) batch: ``loss_fn(images)`` (see
    :func:`training_loss`), backward, an AdamW step, gradients freed. fp16 runs under autocast with a
    GradScaler, bf16 under autocast. The first step (untimed) creates AdamW's state; ``with_cp`` only
    records that the model checkpoints its activations."""
    _check(dtype)
    model.to(device)
    model.train()
    images = torch.randn(batch_size, 3, height, width, device=device)
    optimizer, scaler, state = _optimizer(model, dtype, device, lr)

    def loss() -> torch.Tensor:
        with _autocast(device, dtype):
            return loss_fn(images)

    def held() -> int:
        return tensor_bytes([*model.parameters(), *model.buffers(), *state(), images])

    step = _training_step(name, loss, optimizer, scaler)
    return Bench(name, model, height, width, batch_size, device, dtype, 'train', step, held, with_cp, warmup_min=1)


def _num_classes(model: nn.Module, kind: str) -> int:
    """The class count of a segmentor's decode head, or of a detector's (RoI) box head."""
    if kind == 'mmseg':
        heads = [getattr(model, 'decode_head', None)]
    else:
        heads = [getattr(getattr(model, 'roi_head', None), 'bbox_head', None), getattr(model, 'bbox_head', None)]
    for head in heads:
        head = head[0] if isinstance(head, nn.ModuleList) else head  # (cascade heads)
        if isinstance(getattr(head, 'num_classes', None), int):
            return head.num_classes
    where = 'decode_head' if kind == 'mmseg' else 'roi_head.bbox_head or bbox_head'
    raise ValueError(f'cannot tell the classes of a {type(model).__name__}: it has no {where} with num_classes')


def synthetic_batch(
    model: nn.Module,
    kind: str,
    height: int,
    width: int,
    batch_size: int = 1,
    device: str = 'cpu',
    num_instances: int = 3,
    seed: int = 0,
) -> dict:
    """One training batch as an mmdet / mmseg model's data preprocessor takes it from a dataloader:
    ``inputs``, random uint8 (3, height, width) images, and ``data_samples``: for ``kind`` 'mmdet',
    DetDataSamples with ``num_instances`` random boxes (20-70 % of the image a side) and labels, plus
    box-shaped BitmapMasks where the detector has a mask head; for 'mmseg', SegDataSamples with a random
    ``gt_sem_seg``. The tensors are on ``device``."""
    from mmengine.structures import InstanceData, PixelData

    if kind not in ('mmdet', 'mmseg'):
        raise ValueError(f"kind must be 'mmdet' or 'mmseg', got {kind!r}")
    if num_instances < 1:
        raise ValueError(f'num_instances must be >= 1, got {num_instances}')
    num_classes = _num_classes(model, kind)
    generator = torch.Generator().manual_seed(seed)
    shape = (height, width)
    inputs, samples = [], []
    for index in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator).to(device))
        if kind == 'mmseg':
            from mmseg.structures import SegDataSample

            sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
            labels = torch.randint(0, num_classes, (1, height, width), generator=generator)
            sample.gt_sem_seg = PixelData(data=labels.to(device))
            samples.append(sample)
            continue
        import numpy as np
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks

        size = torch.tensor([width, height], dtype=torch.float32)
        box_size = size * (0.2 + 0.5 * torch.rand(num_instances, 2, generator=generator))
        corner = (size - box_size) * torch.rand(num_instances, 2, generator=generator)
        boxes = torch.cat([corner, corner + box_size], dim=1)
        labels = torch.randint(0, num_classes, (num_instances,), generator=generator)
        instances = InstanceData(bboxes=boxes.to(device), labels=labels.to(device))
        if model.with_mask:
            masks = np.zeros((num_instances, height, width), dtype=np.uint8)
            for mask, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist()):
                mask[y1:y2, x1:x2] = 1
            instances.masks = BitmapMasks(masks, height, width)
        metainfo = dict(img_id=index, img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=(1.0, 1.0))
        sample = DetDataSample(metainfo=dict(metainfo, flip=False, flip_direction=None))
        sample.gt_instances = instances
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def config_train_bench(
    name: str,
    model: nn.Module,
    kind: str,
    height: int,
    width: int,
    batch_size: int = 1,
    device: str = 'cpu',
    dtype: str = 'fp32',
    with_cp: bool = False,
    lr: float = 1e-4,
) -> Bench:
    """Training steps of an mmdet detector or mmseg segmentor (``kind``) on one :func:`synthetic_batch`, as
    mmengine's ``BaseModel.train_step`` runs them with an ``OptimWrapper``: the data preprocessor (in
    training mode) and the losses (``mode='loss'``) under autocast for fp16 / bf16, ``parse_losses``,
    backward, an AdamW step (a GradScaler for fp16), gradients freed. A preprocessor that pads to a fixed
    size (mmseg's ``size``, the crop size) pads to (height, width) instead. The first step (untimed) creates
    AdamW's state and raises FloatingPointError if its loss is not finite."""
    _check(dtype)
    model.to(device)
    model.train()
    data = synthetic_batch(model, kind, height, width, batch_size, device)
    preprocessor = model.data_preprocessor
    fixed_size = getattr(preprocessor, 'size', None) is not None
    optimizer, scaler, state = _optimizer(model, dtype, device, lr)
    if kind == 'mmseg':
        targets = [sample.gt_sem_seg.data for sample in data['data_samples']]
    else:
        targets = [
            t for sample in data['data_samples'] for t in (sample.gt_instances.bboxes, sample.gt_instances.labels)
        ]

    def loss() -> torch.Tensor:
        if fixed_size:  # (the model may be timed at other shapes in between)
            preprocessor.size = (height, width)
        with _autocast(device, dtype):
            batch = preprocessor(data, True)
            losses = model(**batch, mode='loss')
        return model.parse_losses(losses)[0]

    def held() -> int:
        return tensor_bytes([*model.parameters(), *model.buffers(), *state(), *data['inputs'], *targets])

    step = _training_step(name, loss, optimizer, scaler)
    return Bench(name, model, height, width, batch_size, device, dtype, 'train', step, held, with_cp, warmup_min=1)


# Measuring benches


def _flops(bench: Bench) -> int:
    """The FLOPs of one pass of ``bench``, counted in one extra pass of the eager bench (a compiled bench
    does the same work as its eager one)."""
    source = bench.eager or bench
    if source.flops is None:
        source.flops = count_flops(source.step)
    return source.flops


def _warm_up(bench: Bench, warmup: int) -> None:
    for index in range(max(warmup, bench.warmup_min)):
        if index == 0 and bench.compiled:
            try:
                bench.step()
            except Exception as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
                raise RuntimeError(
                    f'torch.compile(fullgraph=True) of {bench.name} failed at {bench.height}x{bench.width} '
                    f'{bench.dtype}: {type(error).__name__}: {first_line}'
                ) from error
        else:
            bench.step()


def _no_recompiling(benches: Sequence[Bench]):
    """While timing: compiled benches must not compile again (the compile time is no part of a pass)."""
    if any(bench.compiled for bench in benches):
        return torch.compiler.set_stance('fail_on_recompile')
    return contextlib.nullcontext()


def _cpu_memory(bench: Bench) -> tuple[float, float]:
    """(peak, rise) in MiB on the CPU: the held tensors plus the largest rise during one profiled pass."""
    start = bench.held()
    rise = cpu_allocation_peak(bench.step)
    return (start + rise) / 2**20, rise / 2**20


def _result(
    bench: Bench,
    times: Sequence[float],
    peak: float,
    rise: float,
    peak_rss: Optional[float],
    gemm_gflops: Optional[float],
) -> Measurement:
    median = statistics.median(times)
    row = Measurement(
        bench.name,
        bench.height,
        bench.width,
        bench.batch_size,
        bench.device,
        bench.dtype,
        sum(p.numel() for p in bench.model.parameters()) / 1e6,
        median,
        (max(times) - min(times)) / 2,
        bench.batch_size * 1000 / median,
        peak,
        mode=bench.mode,
        with_cp=bench.with_cp,
        step_memory_mib=rise,
        latency_min_ms=min(times),
        peak_rss_mib=peak_rss,
        compiled=bench.compiled,
    )
    if bench.eager is not None and bench.eager.measured is not None:
        row.vs_eager = median / bench.eager.measured.latency_ms
    if gemm_gflops is not None:
        row.gflop = _flops(bench) / 1e9
        row.gflops = row.gflop / (median / 1000)
        set_gemm_rate(row, gemm_gflops)
    bench.measured = row
    return row


def set_gemm_rate(row: Measurement, gemm_gflops: float) -> None:
    """Set the machine's GEMM rate of ``row`` (which has its FLOP rate) and its share of it."""
    row.gemm_rate_gflops = gemm_gflops
    row.gemm_fraction = row.gflops / gemm_gflops


def _timed_pass(bench: Bench) -> tuple[float, int]:
    """One timed pass of ``bench``: its milliseconds and, on GPUs, the largest rise of allocated memory
    above the pass's start (bytes; 0 on CPUs, whose memory is measured in a profiled pass)."""
    if not bench.device.startswith('cuda'):
        return _time_once(bench.step, bench.device), 0
    torch.cuda.synchronize(bench.device)
    start = torch.cuda.memory_allocated(bench.device)
    torch.cuda.reset_peak_memory_stats(bench.device)
    elapsed_ms = _time_once(bench.step, bench.device)
    return elapsed_ms, torch.cuda.max_memory_allocated(bench.device) - start


def measure_bench(bench: Bench, warmup: int, iters: int, gemm_gflops: Optional[float] = None) -> Measurement:
    """Time ``bench`` alone: ``warmup`` untimed passes (at least its ``warmup_min``), ``iters`` timed ones,
    then its memory (on CPUs in one more, profiled pass). With ``gemm_gflops`` (the fastest of
    :func:`gemm_rates`) the FLOPs of a pass are counted too (one more pass) and the achieved rate set against
    it. A compiled bench starts from cleared compile caches (``torch.compiler.reset``), so that shapes and
    dtypes compiled before do not add up to dynamo's recompile limit."""
    _check(bench.dtype, warmup, iters)
    if gemm_gflops is not None:
        _flops(bench)
    if bench.compiled:
        torch.compiler.reset()
    _warm_up(bench, warmup)
    cuda = bench.device.startswith('cuda')
    if cuda:
        torch.cuda.synchronize(bench.device)
        start = torch.cuda.memory_allocated(bench.device)
    rss_reset = not cuda and _reset_peak_rss()
    with _no_recompiling([bench]):
        times, rises = zip(*(_timed_pass(bench) for _ in range(iters)))
        if cuda:
            peak, rise, peak_rss = (start + max(rises)) / 2**20, max(rises) / 2**20, None
        else:
            peak_rss = _read_peak_rss_mib() if rss_reset else None
            peak, rise = _cpu_memory(bench)
    return _result(bench, times, peak, rise, peak_rss, gemm_gflops)


def measure_interleaved(
    benches: Sequence[Bench], warmup: int, iters: int, gemm_gflops: Optional[float] = None
) -> list[Measurement]:
    """Time ``benches`` in rounds: each bench's warm-up first (compiling the compiled ones), then ``iters``
    rounds, each running every bench once in order, so that a slow spell of the machine falls on all of
    them alike; then each one's memory. Peak memory is the bench's held tensors plus the largest rise during
    one of its passes (on CPUs, one more profiled pass); the process's peak RSS is not per bench and is left
    out. ``gemm_gflops`` as in :func:`measure_bench`."""
    for bench in benches:
        _check(bench.dtype, warmup, iters)
    if gemm_gflops is not None:
        for bench in benches:
            _flops(bench)
    # every shape and dtype of a model is one more compiled graph of the same code
    limit = max(torch._dynamo.config.recompile_limit, sum(bench.compiled for bench in benches))
    with torch._dynamo.config.patch(recompile_limit=limit):
        for bench in benches:
            _warm_up(bench, warmup)
    times: list[list[float]] = [[] for _ in benches]
    cuda_rise = [0] * len(benches)
    with _no_recompiling(benches):
        for _ in range(iters):
            for index, bench in enumerate(benches):
                elapsed_ms, rise_bytes = _timed_pass(bench)
                times[index].append(elapsed_ms)
                cuda_rise[index] = max(cuda_rise[index], rise_bytes)
        rows = []
        for bench, bench_times, rise_bytes in zip(benches, times, cuda_rise):
            if bench.device.startswith('cuda'):
                peak, rise = (bench.held() + rise_bytes) / 2**20, rise_bytes / 2**20
            else:
                peak, rise = _cpu_memory(bench)
            row = _result(bench, bench_times, peak, rise, None, gemm_gflops)
            row.round_times_ms = list(bench_times)
            rows.append(row)
    return rows


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
    bench = inference_benches(name, model, forward, height, width, batch_size, device, dtype)[0]
    return measure_bench(bench, warmup, iters)


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
    """Time training steps (:func:`train_bench`) on a (batch_size, 3, height, width) batch.

    The peak memory counts parameters, buffers, AdamW's state (created in the first, untimed step) and the
    input, plus the rise during a step (activations kept for backward, gradients, temporaries);
    ``step_memory_mib`` is that rise alone, which is what activation checkpointing (``with_cp``, recorded
    here) reduces.
    """
    _check(dtype, warmup, iters)
    bench = train_bench(name, model, loss_fn, height, width, batch_size, device, dtype, with_cp, lr)
    return measure_bench(bench, warmup, iters)


def add_first_ratios(rows: Sequence[Measurement]) -> None:
    """Set each row's ``vs_first``: its latency over that of the first row at the same input, batch,
    device, dtype and mode (compiled and with_cp included), e.g. PaCa-Small's latency in Swin-T's; and its
    ``vs_first_input``: its latency over that of the same model's first row at the same batch, device, dtype and
    mode, e.g. the time growth from 800x1280 to 1600x2560. Rows timed in the same interleaved rounds
    (``round_times_ms``) also get the quartiles of the per-round ratios (``vs_first_rounds``,
    ``vs_first_input_rounds``): a slow spell of a shared machine that falls on one round moves both passes of
    that round, not the ratio of the medians of passes timed at different moments."""
    first: dict[tuple, Measurement] = {}
    first_input: dict[tuple, Measurement] = {}
    for row in rows:
        key = (row.height, row.width, row.batch_size, row.device, row.dtype, row.mode_label)
        reference = first.setdefault(key, row)
        row.vs_first = row.latency_ms / reference.latency_ms
        row.vs_first_rounds = _round_ratios(row, reference)
        key = (row.model, row.batch_size, row.device, row.dtype, row.mode_label)
        reference = first_input.setdefault(key, row)
        row.vs_first_input = row.latency_ms / reference.latency_ms
        row.vs_first_input_rounds = _round_ratios(row, reference)


def _round_ratios(row: Measurement, reference: Measurement) -> Optional[tuple[float, float, float]]:
    """The quartiles (q1, median, q3) of ``row``'s per-round latency over ``reference``'s, or None unless both
    were timed in the same interleaved rounds (as many of them, at least two)."""
    ours, theirs = row.round_times_ms, reference.round_times_ms
    if ours is None or theirs is None or len(ours) != len(theirs) or len(ours) < 2:
        return None
    ratios = [a / b for a, b in zip(ours, theirs)]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return q1, median, q3


def _mib(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.0f}'


def _ratio(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.2f}'


def _quartiles(values: Optional[tuple[float, float, float]]) -> str:
    return '-' if values is None else f'{values[1]:.2f} ({values[0]:.2f}-{values[2]:.2f})'


def format_table(rows: Sequence[Measurement]) -> str:
    """A Markdown table of ``rows``; the compiled/eager and FLOP columns only where some row has them."""
    columns: list[tuple[str, Callable[[Measurement], str]]] = [
        ('model', lambda r: r.model),
        ('mode', lambda r: r.mode_label),
        ('input', lambda r: f'{r.height}x{r.width}'),
        ('batch', lambda r: str(r.batch_size)),
        ('device', lambda r: r.device),
        ('dtype', lambda r: r.dtype),
        ('params (M)', lambda r: f'{r.params_m:.1f}'),
        ('latency (ms)', lambda r: f'{r.latency_ms:.1f} ± {r.latency_spread_ms:.1f}'),
        ('min (ms)', lambda r: '-' if r.latency_min_ms is None else f'{r.latency_min_ms:.1f}'),
        ('× first', lambda r: _ratio(r.vs_first)),
    ]
    paired = any(r.vs_first_rounds is not None for r in rows)
    if paired:
        columns.append(('× first, per round', lambda r: _quartiles(r.vs_first_rounds)))
    if len({(r.height, r.width) for r in rows}) > 1:
        columns.append(('× first input', lambda r: _ratio(r.vs_first_input)))
        if paired:
            columns.append(('× first input, per round', lambda r: _quartiles(r.vs_first_input_rounds)))
    if any(r.compiled for r in rows):
        columns.append(('× eager', lambda r: _ratio(r.vs_eager)))
    columns.append(('images/s', lambda r: f'{r.throughput:.2f}'))
    if any(r.gflop is not None for r in rows):
        columns += [
            ('GFLOP', lambda r: '-' if r.gflop is None else f'{r.gflop:.2f}'),
            ('GFLOP/s', lambda r: '-' if r.gflops is None else f'{r.gflops:.1f}'),
            ('% of GEMM', lambda r: '-' if r.gemm_fraction is None else f'{100 * r.gemm_fraction:.0f}%'),
        ]
    columns += [
        ('peak mem (MiB)', lambda r: _mib(r.peak_memory_mib)),
        ('rise in pass (MiB)', lambda r: _mib(r.step_memory_mib)),
        ('peak RSS (MiB)', lambda r: _mib(r.peak_rss_mib)),
    ]
    lines = [[title for title, _ in columns]] + [[cell(r) for _, cell in columns] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
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
        mode = '' if row.mode_label == 'inference' else f', {row.mode_label}'
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
