"""Band-by-band execution of token-local layers on CPUs, so that their intermediates stay in the cache.

A layer whose output token at row r depends only on input rows r - halo .. r + halo (token-wise layers:
halo 0; a 3x3 convolution with zero padding: halo 1) gives the same result when it runs on horizontal
bands of the token map, each with ``halo`` extra rows of context on either side that are dropped from its
output. At detection resolutions the hidden activations of such a layer are larger than a CPU's last-level
cache (PaCa-ViT's stage-1 FFN at 800x1280: 64,000 tokens x 384 channels, 98 MB in fp32), and each of its
element-wise steps then streams them through memory; on bands of a few MiB they stay in the cache. On the
project's 2-core EPYC machines this runs PaCa-Small's stage-1 FFN 2.3x faster (209 -> 90 ms per block,
``docs/benchmarks.md``). GPUs run whole maps: there the layer runs once.

Most of such a layer is usually row-wise (a PaCa block: attention with global keys, LayerNorms, the FFN's
first linear layer) and only one step needs the neighbouring rows (the FFN's depth-wise conv). Computing the
row-wise part on the halo rows too would redo it on ``2 * halo`` rows of every band: 12% more work on bands
of 17 rows, PaCa-Small's stage 0 at 1600x2560. With a ``rowwise`` function the row-wise part runs
once per row. A band's row-wise output is at once the context of its interior rows, those at least ``halo``
rows from the band's edges, which are computed next, while it is in the cache. The ``halo`` rows either side of
each border between two bands (a seam) follow the next band's row-wise part, on ``2 * halo`` rows of each of the
two bands' outputs: the only rows copied. On the Zen 5 machine of ``docs/benchmarks.md`` this ran PaCa-Small
2-3% faster than laying each band's whole context out in a buffer (its own rows copied after the next band's
row-wise part), and the same whether or not gradients are needed.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

# Hidden activation elements per band: 2**22 fp32 values (16 MiB); PaCa-Small's stages 0 and 1 run in bands of 34
# rows at 800x1280 (stages 2 and 3 whole), and of 17 at 1600x2560. 2**21 was chosen when each band's context was
# copied into a buffer after the next band's row-wise part (so it had to stay in the cache meanwhile); with the seams
# (_bands_and_seams) PaCa-Small took 0.95 of the time with 2**22 at 800x1280 and 0.94 at 1600x2560 on the Zen 5
# machine of docs/benchmarks.md, glibc's heap kept (1.00 and 0.91 with default malloc). 2**23 ran whole maps at
# 800x1280, 1.45x slower with default malloc. On the Zen 4 machine there, 2**23 took 0.94 of the time at 1600x2560
# with the heap kept and 1.05 with default malloc.
BAND_ELEMENTS = 2**22
# Maps of at most this many bands run whole: there the bands' own work (halo rows read by two bands, the norms of
# the clustering and pooling redone per band, band outputs copied) costs more than the cache saves. On the Zen 5
# machine of docs/benchmarks.md, PaCa-Small at 800x1280 took 0.96-0.97 of the time with its stage 2 (3 bands) whole;
# on the Zen 4 one there, that stage alone took 1.03-1.09 of its whole-map time in 2 or 3 bands.
WHOLE_MAP_BANDS = 3
# ... unless the whole map's widest intermediate holds more values than this (32 MiB in fp32): glibc's malloc, by
# default, gives every block of 32 MiB or more (its largest dynamic mmap threshold) fresh pages from the kernel,
# which fault in and are zeroed on every pass. On the Zen 4 machine of docs/benchmarks.md, PaCa-Small's stage 1 at
# 800x1280 (16,000 tokens x 768 hidden channels, 47 MiB) took 0.87 of its whole-map time in bands with default
# malloc, and 1.05 with glibc's heap kept (MALLOC_MMAP_THRESHOLD_ raised).
WHOLE_MAP_ELEMENTS = 2**23

Grid = tuple[int, int]
RowwiseFn = Callable[[torch.Tensor, Grid], tuple[torch.Tensor, torch.Tensor]]
LocalFn = Callable[[torch.Tensor, torch.Tensor, Grid, slice], torch.Tensor]


def band_height(x: torch.Tensor, hw: Grid, hidden_dim: int, halo: int = 0) -> Optional[int]:
    """Rows per band for tokens x (B, H*W, C) whose widest intermediate has ``hidden_dim`` channels, at least
    ``2 * halo`` (a band's seams with its neighbours, :func:`_bands_and_seams`), or None when the map runs whole:
    off the CPU, when it is empty, when one band would hold the whole map, or when :data:`WHOLE_MAP_BANDS` bands
    would and the whole intermediate has at most :data:`WHOLE_MAP_ELEMENTS` values."""
    if x.device.type != 'cpu' or x.shape[0] * hw[1] * hidden_dim == 0:
        return None
    rows = max(1, 2 * halo, BAND_ELEMENTS // (x.shape[0] * hw[1] * hidden_dim))
    small = x.shape[0] * hw[0] * hw[1] * hidden_dim <= WHOLE_MAP_ELEMENTS
    whole = rows >= hw[0] or (rows * WHOLE_MAP_BANDS >= hw[0] and small)
    return None if whole else rows


def token_chunk(x: torch.Tensor, channels: int) -> Optional[int]:
    """Tokens per chunk for token-wise work on x (B, N, C) whose intermediate has ``channels`` channels, or None
    when x runs whole: off the CPU, or when one chunk would hold all N tokens."""
    tokens = max(1, BAND_ELEMENTS // (x.shape[0] * channels))
    return None if x.device.type != 'cpu' or tokens >= x.shape[1] else tokens


def map_row_bands(
    local: LocalFn,
    x: torch.Tensor,
    hw: Grid,
    hidden_dim: int,
    halo: int = 0,
    rowwise: Optional[RowwiseFn] = None,
    tokens_last: bool = False,
    overwrite_input: bool = False,
) -> torch.Tensor:
    """A token-local layer on tokens x (B, H*W, C) of an H x W grid, run band by band on CPUs.

    The layer is ``local(*rowwise(x))``:

    * ``rowwise(x, hw) -> (kept, context)``: the row-wise part; row r of both outputs depends on input row r
      only. It runs once per row. Without it, ``kept`` and ``context`` are x itself.
    * ``local(kept, context, context_hw, rows) -> out``: the output tokens (B, n, C') of ``kept``'s rows
      ((B, C', n) with ``tokens_last``).
      ``context`` (on a ``context_hw`` grid) holds the same rows of the row-wise ``context`` plus up to
      ``halo`` rows above and below them (fewer at the map's borders, where a convolution's zero padding
      stands in for them); ``rows`` is the slice of ``kept``'s rows within ``context``.

    Args:
        local: the local part, see above; its output row r may depend on context rows r - halo .. r + halo.
        x: tokens (B, H*W, C) in row-major order.
        hw: the grid (H, W).
        hidden_dim: the widest intermediate per token (channels), which sets the band height.
        halo: rows of context each output row needs on either side.
        rowwise: the row-wise part, see above.
        tokens_last: ``local`` returns its output tokens last, (B, C', n), and so does this function: a
            contiguous (B, C', H*W) tensor instead of (B, H*W, C').
        overwrite_input: with ``rowwise``, the bands' outputs may be written over x, when x is contiguous and the
            output has its shape and dtype (then x is returned), instead of into a new tensor: for callers to whom
            x is a temporary. Each band's rows of x are read (by ``rowwise``) before any output row is written
            there, so ``rowwise``'s outputs must not share x's memory: where the first band's do, the output is a
            new tensor. Whole maps, and torch.compile's tracing, return a new tensor.
    """
    height, width = hw
    rows = band_height(x, hw, hidden_dim, halo)
    if rows is None:
        kept, context = rowwise(x, hw) if rowwise is not None else (x, x)
        out = local(kept, context, hw, slice(0, height))
        return out.contiguous() if tokens_last else out
    grid = x.unflatten(1, (height, width))
    bands = [(top, min(top + rows, height)) for top in range(0, height, rows)]
    reusable = overwrite_input and rowwise is not None and not tokens_last and x.is_contiguous()
    outs = _BandOutputs(height * width, tokens_last, x if reusable and not torch.compiler.is_compiling() else None)
    if rowwise is None:
        for top, bottom in bands:
            first, last = max(top - halo, 0), min(bottom + halo, height)
            context = grid[:, first:last].flatten(1, 2)
            kept = context[:, (top - first) * width : (bottom - first) * width]
            outs.append(local(kept, context, (last - first, width), slice(top - first, bottom - first)))
        return outs.result()
    return _bands_and_seams(local, grid, bands, halo, rowwise, outs)


def _bands_and_seams(
    local: LocalFn,
    grid: torch.Tensor,
    bands: list[tuple[int, int]],
    halo: int,
    rowwise: RowwiseFn,
    outs: _BandOutputs,
) -> torch.Tensor:
    """:func:`map_row_bands` with a row-wise part: each band's row-wise output is the context of the band's
    interior rows as it is (no copy), right after it is computed, while it is in the cache; the ``halo`` rows
    either side of each border between two bands (a seam) run on the ``2 * halo`` rows of each band around it,
    the one copy made. Bands but the last have at least ``2 * halo`` rows (:func:`band_height`)."""
    width = grid.shape[2]

    def rows_of(tokens: torch.Tensor, first: int, last: int) -> torch.Tensor:
        return tokens[:, first * width : last * width]

    above: Optional[tuple[torch.Tensor, torch.Tensor, int]] = None  # the band above: kept, context, rows
    for i, (top, bottom) in enumerate(bands):
        height = bottom - top
        kept, context = rowwise(grid[:, top:bottom].flatten(1, 2), (height, width))
        if i == 0 and outs.reuse is not None and _shares_storage(grid, kept, context):
            outs.reuse = None  # views of x would read rows already overwritten
        if above is not None and halo:
            kept_above, context_above, height_above = above
            # the band above is not the last: it has at least 2 * halo rows (band_height)
            up, down, own = 2 * halo, min(2 * halo, height), min(halo, height)
            seam = torch.cat([rows_of(context_above, height_above - up, height_above), rows_of(context, 0, down)], 1)
            seam_kept = torch.cat([rows_of(kept_above, height_above - halo, height_above), rows_of(kept, 0, own)], 1)
            outs.append(local(seam_kept, seam, (up + down, width), slice(up - halo, up + own)))
        first, last = (halo if above is not None else 0), (height - halo if i + 1 < len(bands) else height)
        if last > first:
            outs.append(local(rows_of(kept, first, last), context, (height, width), slice(first, last)))
        above = kept, context, height
    return outs.result()


def _shares_storage(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    return any(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in tensors)


def conv_rows(
    conv: nn.Conv2d,
    x: torch.Tensor,
    rows: slice,
    weight: Optional[torch.Tensor] = None,
    act: Optional[nn.Module] = None,
) -> torch.Tensor:
    """``act(conv(x))[:, :, rows]`` for a stride-1 'same' convolution with an odd square kernel, computing only
    those rows: a band's context rows are input, not output. Away from the map's top and bottom, the rows
    above and below ``rows`` stand in for the zero padding; at the borders the padding is used as ``conv``
    has it. ``weight`` replaces ``conv.weight`` if given; ``act`` is an optional activation after the conv."""
    halo = conv.kernel_size[0] // 2
    weight = conv.weight if weight is None else weight
    top, bottom = max(rows.start - halo, 0), min(rows.stop + halo, x.shape[2])
    interior = rows.start - halo >= 0 and rows.stop + halo <= x.shape[2]
    out = _conv_act(x[:, :, top:bottom], weight, conv.bias, (0 if interior else halo, halo), conv.groups, act)
    return out if interior else out[:, :, rows.start - top : rows.stop - top]


def _onednn_op(name: str):
    """torch's private oneDNN op ``torch.ops.mkldnn.<name>``, or None in builds without oneDNN."""
    return getattr(torch.ops.mkldnn, name, None) if torch.backends.mkldnn.is_available() else None


# The oneDNN ops that torch.compile's CPU backend emits, called directly in fp32 CPU inference (None without
# oneDNN: then conv, then act; F.linear); mmcluster.utils.flops gives torch's FLOP counter formulas for them.
FUSED_CONV = _onednn_op('_convolution_pointwise')  # convolution + fused activation
ONEDNN_LINEAR = _onednn_op('_linear_pointwise')  # matmul of linear layers

# Whether linear() runs on oneDNN's matmul or, as F.linear does, on the BLAS GEMM (MKL's SGEMM in torch's x86 wheels):
# None decides it on first use, once per process and torch thread count (onednn_linear_is_faster); True or False
# decides it. Which is faster depends on the CPU: on the AMD Zen 5 machines of docs/benchmarks.md (CPU family 26)
# oneDNN's ran at about twice MKL's rate; on the Zen 4 ones 3-20% faster at PaCa-ViT's shapes (one of twelve 8%
# slower); on the Zen 3 ones MKL's was 1.03-1.22x faster at the linear layers' shapes, and with F.linear PaCa-Small
# took 0.94-0.95 of its time at 800x1280 and 1600x2560, PaCa-Tiny 0.95-0.98 at 224^2.
ONEDNN_LINEAR_FASTER: Optional[bool] = None
# The linear layers' probe: a product shaped like an FFN's second layer at PaCa-Small's stage 2 (512 tokens of 1280
# hidden channels into 320: 0.4 GFLOP into 640 KiB, so that the output's allocation does not weigh), and the median
# per-round time ratio (BLAS / oneDNN) from which oneDNN's matmul is chosen: whichever is faster.
LINEAR_PROBE_SHAPE = (512, 320, 1280)  # rows, output columns, row length
LINEAR_GEMM_RATIO = 1.0
# Rounds of every GemmProbe, after one that warms both GEMMs up.
PROBE_ROUNDS = 10
_measuring = threading.Lock()  # one measurement at a time, of any probe: two at once would time each other


class GemmProbe:
    """Whether oneDNN's matmul is faster than the BLAS GEMM (``torch.mm``) on this machine by a margin, for fp32
    products of one shape: measured once per process and torch thread count, in :data:`PROBE_ROUNDS` interleaved
    rounds (each GEMM first in every other round) after one that warms both up, as the median per-round ratio of
    the BLAS time to oneDNN's, at least ``ratio``. It answers False without measuring where there is no oneDNN
    matmul op, and under a torch dispatch mode (a FLOP counter, FakeTensorMode, make_fx) or ``torch.jit`` tracing:
    what is counted or traced takes torch's own ops.

    Args:
        shape: (rows, output columns, row length) of the product ``a @ weight^T``.
        ratio: the margin, the BLAS time over oneDNN's, from which oneDNN's matmul wins.
    """

    def __init__(self, shape: tuple[int, int, int], ratio: float) -> None:
        self.shape, self.ratio = shape, ratio
        self.answers: dict[int, bool] = {}  # measured, per thread count

    def onednn_faster(self) -> bool:
        if ONEDNN_LINEAR is None or is_in_torch_dispatch_mode() or torch.jit.is_tracing():
            return False
        threads = torch.get_num_threads()
        if threads not in self.answers:
            with _measuring:
                if threads not in self.answers:  # or another thread measured it while this one waited
                    self.answers[threads] = self.wins(self.measure())
        return self.answers[threads]

    def wins(self, ratios: list[float]) -> bool:
        """The decision from the per-round time ratios (BLAS / oneDNN): their median, so that a few rounds in a
        slow spell of one GEMM do not decide it."""
        return statistics.median(ratios) >= self.ratio

    def measure(self) -> list[float]:
        """The per-round time ratios (BLAS / oneDNN)."""
        generator = torch.Generator().manual_seed(0)
        rows, columns, length = self.shape
        a = torch.randn(rows, length, generator=generator, device='cpu', dtype=torch.float32)
        weight = torch.randn(columns, length, generator=generator, device='cpu', dtype=torch.float32)
        out = a.new_empty(rows, columns)
        ratios = []
        label = f'mmcluster.GemmProbe{self.shape}'  # named in a profile of the first pass (profile_model.py --warmup 0)
        with torch.no_grad(), torch.autocast('cpu', enabled=False), torch.profiler.record_function(label):
            for round_ in range(PROBE_ROUNDS + 1):  # the first round warms both up
                took = {}
                for blas in (True, False) if round_ % 2 else (False, True):
                    start = time.perf_counter()
                    blas_product(a, weight, out) if blas else onednn_product(a, weight, out)
                    took[blas] = time.perf_counter() - start
                if round_:
                    ratios.append(took[True] / took[False])
        return ratios


def blas_product(a: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a @ weight^T`` into ``out`` on the BLAS GEMM: the one under F.linear and torch's fused attention kernel on
    CPUs."""
    return torch.mm(a, weight.t(), out=out)


def onednn_product(a: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a @ weight^T`` on oneDNN's matmul, the op of :func:`onednn_linear` (called directly: the probe times it
    whatever the grad and autocast state of its caller), into a tensor allocated per call as the layers' calls are
    (``out`` is not used)."""
    return ONEDNN_LINEAR(a, weight, None, 'none', [], '')


LINEAR_PROBE = GemmProbe(LINEAR_PROBE_SHAPE, LINEAR_GEMM_RATIO)


def onednn_linear_is_faster() -> bool:
    """Whether :func:`linear` runs on oneDNN's matmul on this machine at torch's current thread count:
    :data:`ONEDNN_LINEAR_FASTER` if set, else :data:`LINEAR_PROBE`'s answer, measured once (65-100 ms on 2 threads
    of the Zen 3 machine of ``docs/benchmarks.md``). Either way gives the same values within fp32 rounding; only the
    time differs."""
    return LINEAR_PROBE.onednn_faster() if ONEDNN_LINEAR_FASTER is None else ONEDNN_LINEAR_FASTER


def cpu_fp32_inference(x: torch.Tensor, *params: Optional[torch.Tensor]) -> bool:
    """Whether an op on x with ``params`` (weight, bias) may run on oneDNN's private CPU ops: fp32 on the CPU,
    no autocast, no gradient needed, and neither compiling (the compiler emits and fuses such ops itself; the
    fake kernel of the fused conv gives a band of a channels-last map NCHW strides, on which Inductor's
    generated code fails) nor tracing with ``torch.jit`` (exporters do not know the private ops)."""
    tensors = [x, *(p for p in params if p is not None)]
    return (
        x.device.type == 'cpu'
        and all(t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled('cpu')
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def _conv_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    padding: tuple[int, int],
    groups: int,
    act: Optional[nn.Module],
) -> torch.Tensor:
    """``act(F.conv2d(x, ...))``. An exact GELU after an fp32 convolution on the CPU, in inference, runs inside
    oneDNN's convolution (its ``eltwise_gelu_erf`` post-op, through ``torch.ops.mkldnn._convolution_pointwise``,
    the fused op that torch.compile's CPU backend uses): the activation is applied while the output is in
    registers, instead of by one more pass over it. Its values are within 1e-6 of the conv's, then ``F.gelu``'s
    (``tests/models/test_paca_speed_paths.py``)."""
    fusable = _exact_gelu(act) and FUSED_CONV is not None and cpu_fp32_inference(x, weight, bias)
    if fusable:
        return FUSED_CONV(x, weight, bias, list(padding), [1, 1], [1, 1], groups, 'gelu', [], 'none')
    out = F.conv2d(x, weight, bias, padding=padding, groups=groups)
    return out if act is None else act(out)


def _exact_gelu(act: Optional[nn.Module]) -> bool:
    """Whether ``act`` is the exact (erf) GELU, which oneDNN's convolution and matmul can apply as a post-op."""
    return isinstance(act, nn.GELU) and act.approximate == 'none'


def _onednn_linear_runs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether oneDNN's matmul may take these arguments (:func:`onednn_linear`; :func:`linear` also asks whether it is
    the faster GEMM)."""
    return (
        ONEDNN_LINEAR is not None
        and x.dim() >= 2
        and x.numel() > 0
        and weight.dim() == 2
        and weight.is_contiguous()
        and cpu_fp32_inference(x, weight, bias)
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: Optional[nn.Module] = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ``act`` if given. In fp32 CPU inference on a machine where oneDNN's matmul
    is the faster GEMM (:func:`onednn_linear_is_faster`) it is :func:`onednn_linear`: about 2x faster than the BLAS
    ``addmm`` of ``F.linear`` on AMD Zen 5 CPUs (CPU family 26), where MKL's GEMM runs at less than half oneDNN's
    rate, and mostly 3-20% faster at PaCa-ViT's shapes on Zen 4 ones; on Zen 3 ones MKL's is the faster
    (``docs/benchmarks.md``)."""
    if _onednn_linear_runs(x, weight, bias) and onednn_linear_is_faster():
        return _onednn_linear(x, weight, bias, act)
    return _blas_linear(x, weight, bias, act)


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: Optional[nn.Module] = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ``act`` if given, on oneDNN's matmul
    (``torch.ops.mkldnn._linear_pointwise``) in fp32 CPU inference whichever GEMM is faster: for callers that chose
    it by a probe of their own (attention head by head). The same products, summed in another order
    (``tests/models/test_paca_speed_paths.py``). An exact GELU as ``act`` then runs inside the matmul (its
    ``gelu_erf`` post-op, as in :func:`conv_rows`), while the output is in registers: the same values as
    ``F.gelu`` of the product, one pass over the output instead of two. Elsewhere it is ``F.linear``."""
    if _onednn_linear_runs(x, weight, bias):
        return _onednn_linear(x, weight, bias, act)
    return _blas_linear(x, weight, bias, act)


def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], act: Optional[nn.Module]
) -> torch.Tensor:
    fused = _exact_gelu(act)
    attr, algorithm = ('gelu', 'none') if fused else ('none', '')
    out = ONEDNN_LINEAR(x, weight, bias, attr, [], algorithm)
    return out if fused or act is None else act(out)


def _blas_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], act: Optional[nn.Module]
) -> torch.Tensor:
    out = F.linear(x, weight, bias)
    return out if act is None else act(out)


def linear_tokens_last(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias).transpose(1, 2)`` for tokens x (B, n, C) and a weight (M, C): a contiguous
    (B, M, n) tensor. In fp32 CPU inference each sample's product is taken the other way round,
    ``weight @ x[b]^T``, on oneDNN's matmul with the sample's tokens as the matmul's weight, so that it comes
    out in this layout without the transposing copy, which took longer than the product itself (PaCa-ViT's
    stage-0 cluster logits at 800x1280: 3.0 ms product, 7.2 ms with the copy; 3.1 ms this way round,
    ``docs/benchmarks.md``). The samples' products of a batch are then stacked (a plain copy), and the bias, one
    per row, is added afterwards."""
    if x.dim() == 3 and x.numel() > 0 and x.is_contiguous() and _onednn_linear_runs(weight, x[0], bias):
        products = [ONEDNN_LINEAR(weight, sample, None, 'none', [], '') for sample in x]
        out = products[0].unsqueeze(0) if len(products) == 1 else torch.stack(products)
        return out if bias is None else out.add_(bias.unsqueeze(-1))
    return F.linear(x, weight, bias).transpose(1, 2).contiguous()


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` for a (B, M, K) and b (B, K, N). In fp32 CPU inference with each sample of b
    contiguous, each sample's product runs on oneDNN's matmul with ``b[i]^T`` as a linear layer's weight (a
    transposed view, which oneDNN reads as it is), instead of MKL's batched GEMM: on the Zen 5 machine of
    ``docs/benchmarks.md`` 1.5-2.4x faster for PaCa-ViT's cluster pooling (M = 100 clusters, K = 4,000-64,000
    tokens, N = 96-320 channels). The same products, summed in another order."""
    onednn = (
        ONEDNN_LINEAR is not None
        and a.dim() == b.dim() == 3
        and a.shape[0] == b.shape[0]
        and a.numel() > 0
        and b.numel() > 0
        and b[0].is_contiguous()
        and cpu_fp32_inference(a, b)
    )
    if not onednn:
        return torch.matmul(a, b)
    products = [ONEDNN_LINEAR(a_i, b_i.t(), None, 'none', [], '') for a_i, b_i in zip(a, b)]
    return products[0].unsqueeze(0) if len(products) == 1 else torch.stack(products)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose fp32 CPU inference runs on oneDNN's matmul where that is
    the faster GEMM: :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def contiguous_nchw(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()`` for a (B, C, H, W) map, copied band by band on CPUs.

    A channels-last map (B, H, W, C in memory, as the families' stages leave them) becomes NCHW by a transposing
    copy. In one piece its reads and writes stride across the whole map; by bands of a few rows (an eighth of
    :data:`BAND_ELEMENTS`, 2 MiB), each band is read once and written as C contiguous runs. On the project's 2-core
    EPYC machines this takes 4.3 instead of 14 ms for PaCa-ViT's stage-1 map at 800x1280 (96 x 200 x 320), and 48
    instead of 99 ms at 1600x2560 (``docs/benchmarks.md``).
    """
    if x.device.type != 'cpu' or x.is_contiguous() or x.dim() != 4:
        return x.contiguous()
    rows = max(1, BAND_ELEMENTS // 8 // (x.shape[0] * x.shape[1] * x.shape[3]))
    out = torch.empty(x.shape, dtype=x.dtype)
    for top in range(0, x.shape[2], rows):
        out[:, :, top : top + rows] = x[:, :, top : top + rows]
    return out


class _BandOutputs:
    """The bands' outputs, top to bottom, each copied into one full-size output as it comes: (B, n, C') bands
    into a (B, N, C') tensor, or with ``tokens_last`` (B, C', n) ones into a (B, C', N) tensor. A band's output
    is freed as soon as it is copied, so the next band reuses its memory (still in the cache) instead of the
    bands piling up for a concatenation at the end. The output is ``reuse`` where that has its shape and dtype,
    else a new tensor."""

    def __init__(self, num_tokens: int, tokens_last: bool, reuse: Optional[torch.Tensor] = None) -> None:
        self.num_tokens, self.tokens_last, self.reuse = num_tokens, tokens_last, reuse
        self.out: Optional[torch.Tensor] = None
        self.filled = 0

    def append(self, band: torch.Tensor) -> None:
        axis = 2 if self.tokens_last else 1
        if self.out is None:
            shape = list(band.shape)
            shape[axis] = self.num_tokens
            fits = self.reuse is not None and list(self.reuse.shape) == shape and self.reuse.dtype == band.dtype
            self.out = self.reuse if fits else band.new_empty(shape)
        self.out.narrow(axis, self.filled, band.shape[axis]).copy_(band)
        self.filled += band.shape[axis]

    def result(self) -> torch.Tensor:
        assert self.out is not None and self.filled == self.num_tokens
        return self.out
