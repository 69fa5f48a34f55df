"""PaCa-ViT's fast paths give today's outputs: band-by-band execution of token-local layers
(mmcluster/models/layers/row_bands.py), channels-last convolutions, oneDNN's matmul for the linear layers and
stacked q/k/v GEMMs, against the network written out step by step on NCHW maps with whole-map FFNs and one GEMM
(F.linear) per projection."""

import threading
import time

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import mmcluster.models.backbones.paca_vit as paca_vit
import mmcluster.models.layers.attention as attention
import mmcluster.models.layers.row_bands as row_bands
from mmcluster.models.backbones.paca_vit import PaCaBlock, PaCaViT, fused_linear
from mmcluster.models.layers import (
    ConvDownsample,
    DWConvFFN,
    OneDNNLinear,
    SoftAssignment,
    batched_matmul,
    contiguous_nchw,
    conv_rows,
    linear,
    linear_tokens_last,
    map_row_bands,
    multi_head_attention,
    pool_clusters,
)
from mmcluster.utils.flops import flop_counter


def _conv_layer(weight: torch.Tensor, halo: int, calls: list):
    """A (2 * halo + 1)^2 depth-wise conv with zero padding as the local part of a banded layer: the output
    for the given rows of its context."""

    def conv(kept, context, hw, rows):
        calls.append(hw)
        spatial = rearrange(context, 'b (h w) c -> b c h w', h=hw[0], w=hw[1])
        out = F.conv2d(spatial, weight, padding=halo, groups=weight.shape[0])[:, :, rows]
        assert out.shape[-2] * out.shape[-1] == kept.shape[1]
        return rearrange(out, 'b c h w -> b (h w) c')

    return conv


@pytest.mark.parametrize(
    'elements,halo', [(1, 1), (3 * 13 * 8, 1), (5 * 13 * 8, 2), (2**30, 1), (4 * 13 * 8, 0), (1, 3)]
)
def test_map_row_bands_equals_the_whole_map(small_bands, elements, halo):
    """A depth-wise conv on 1-row (at least 2 * halo rows), 3-row, 5-row and whole-map bands of a 17-row map (the
    last band shorter)."""
    torch.manual_seed(0)
    small_bands(elements)
    height, width, channels = 17, 13, 8
    calls = []
    conv = _conv_layer(torch.randn(channels, 1, 2 * halo + 1, 2 * halo + 1), halo, calls)
    x = torch.randn(2, height * width, channels)
    expected = conv(x, x, (height, width), slice(0, height))
    calls.clear()
    out = map_row_bands(conv, x, (height, width), hidden_dim=channels // 2, halo=halo)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    rows = max(1, 2 * halo, elements // (2 * width * channels // 2))
    assert len(calls) == -(-height // rows)
    assert all(hw[1] == width and hw[0] <= rows + 2 * halo for hw in calls)


@pytest.mark.parametrize('grad', [True, False], ids=['grad', 'inference'])
@pytest.mark.parametrize(
    'elements,halo', [(1, 1), (3 * 13 * 8, 1), (5 * 13 * 8, 2), (1, 3), (4 * 13 * 8, 0), (8 * 13 * 8, 3)]
)
def test_row_wise_part_runs_once_per_row(small_bands, elements, halo, grad):
    """With a row-wise part, every row goes through it exactly once: each band's interior rows take the band's
    row-wise output itself as their context, and the rows around each border between two bands (a seam) take a
    copy of 2 * halo rows of each band's output. The same output as the whole map, with and without gradients;
    bands of 2 * halo rows have no interior, and the last band of the 17 rows may be shorter than the halo."""
    torch.manual_seed(0)
    small_bands(elements)
    height, width, channels = 17, 13, 8
    weight, scale = torch.randn(channels, 1, 2 * halo + 1, 2 * halo + 1), torch.randn(channels)
    rowwise_rows, contexts, local_calls = [], [], []

    def rowwise(tokens, hw):
        rowwise_rows.append(hw[0])
        contexts.append((tokens * scale).tanh())
        return tokens * 2, contexts[-1]

    def local(kept, context, hw, rows):
        local_calls.append((any(context is band for band in contexts), hw[0], rows.stop - rows.start))
        return kept + _conv_layer(weight, halo, [])(kept, context, hw, rows)

    x = torch.randn(2, height * width, channels, requires_grad=grad)
    expected = local(*rowwise(x, (height, width)), (height, width), slice(0, height))
    rowwise_rows.clear(), contexts.clear(), local_calls.clear()
    with torch.set_grad_enabled(grad):
        out = map_row_bands(local, x, (height, width), hidden_dim=channels // 2, halo=halo, rowwise=rowwise)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if grad:  # the gradients through the interiors and the seams' copies
        cotangent = torch.randn_like(out)
        (grad_x,) = torch.autograd.grad(out, x, cotangent)
        (expected_grad,) = torch.autograd.grad(expected, x, cotangent)
        torch.testing.assert_close(grad_x, expected_grad, rtol=1e-5, atol=1e-5)
    rows = max(2 * halo, 1, elements // (2 * width * channels // 2))
    assert rowwise_rows == [rows] * (height // rows) + ([height % rows] if height % rows else [])
    assert sum(output_rows for _, _, output_rows in local_calls) == height  # each output row once
    seams = [(context_rows, output_rows) for own, context_rows, output_rows in local_calls if not own]
    assert len(seams) == (len(rowwise_rows) - 1 if halo else 0)
    assert all(context_rows <= 4 * halo and output_rows <= 2 * halo for context_rows, output_rows in seams)


@pytest.mark.parametrize('elements,rowwise', [(3 * 13 * 8, True), (1, True), (2**30, True), (1, False)])
def test_map_row_bands_may_write_its_output_over_its_input(small_bands, elements, rowwise):
    """overwrite_input: the bands' outputs written over x, whose rows each band's row-wise part has read first,
    the same values as in a new tensor. Whole maps, and bands without a row-wise part (which read their
    neighbours' rows of x), get a new tensor and leave x as it was."""
    torch.manual_seed(0)
    small_bands(elements)
    height, width, channels = 17, 13, 8
    weight, scale = torch.randn(channels, 1, 3, 3), torch.randn(channels)
    conv = _conv_layer(weight, 1, [])

    def row_wise(tokens, hw):
        return tokens * 2, (tokens * scale).tanh()

    def local(kept, context, hw, rows):
        return kept + conv(kept, context, hw, rows)

    x = torch.randn(2, height * width, channels)
    original = x.clone()
    expected = map_row_bands(local, x.clone(), (height, width), 4, halo=1, rowwise=row_wise if rowwise else None)
    out = map_row_bands(
        local, x, (height, width), 4, halo=1, rowwise=row_wise if rowwise else None, overwrite_input=True
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    overwritten = rowwise and elements < 2**30
    assert (out.data_ptr() == x.data_ptr()) == overwritten
    if not overwritten:
        torch.testing.assert_close(x, original, rtol=0, atol=0)


def test_map_row_bands_does_not_overwrite_an_input_that_its_row_wise_part_returns(small_bands):
    """A row-wise part that returns views of x (the identity) would have its context rows overwritten by the seams:
    with overwrite_input the output is then a new tensor, the same as without."""
    torch.manual_seed(0)
    small_bands(3 * 13 * 8)
    conv = _conv_layer(torch.randn(8, 1, 3, 3), 1, [])
    x = torch.randn(2, 17 * 13, 8)
    original = x.clone()
    expected = conv(x, x, (17, 13), slice(0, 17))
    out = map_row_bands(conv, x, (17, 13), 4, halo=1, rowwise=lambda tokens, hw: (tokens, tokens), overwrite_input=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.data_ptr() != x.data_ptr()
    torch.testing.assert_close(x, original, rtol=0, atol=0)


def _spy_blocks(monkeypatch) -> list:
    """Patch PaCaBlock.forward to record (block, overwrite_input, output_norm, banded, output written over input)."""
    calls = []
    block_forward = PaCaBlock.forward

    def spy(block, x, hw, assignment=None, overwrite_input=False, output_norm=None):
        banded = block.runs_in_bands(x, hw)
        out, assignment = block_forward(block, x, hw, assignment, overwrite_input, output_norm)
        calls.append((block, overwrite_input, output_norm, banded, out.data_ptr() == x.data_ptr()))
        return out, assignment

    monkeypatch.setattr(PaCaBlock, 'forward', spy)
    return calls


def test_stage_blocks_write_over_their_input_only_in_inference_without_hooks(small_bands, monkeypatch):
    """In inference each block that runs in bands writes its output over its input, a temporary: the output of the
    block before, of the stage's downsampling or (in stage 0, with no teacher) of the stem. The same outputs as
    without. Not with gradients, and not where a forward hook on either module or a module in it may keep the
    tensor."""
    torch.manual_seed(0)
    small_bands(4 * 8 * 1536)  # stages 0-2 in bands, stage 3 (4 x 8 tokens, 1536 hidden) whole
    model = PaCaViT(arch='tiny', drop_path_rate=0.0).eval()
    images = torch.randn(1, 3, 97, 233)
    calls = _spy_blocks(monkeypatch)

    def run(grad=False):
        calls.clear()
        with torch.set_grad_enabled(grad):
            return model(images)

    outs = run()
    assert [overwrite for _, overwrite, _, banded, _ in calls] == [banded for *_, banded, _ in calls]
    assert all(same == overwrite for _, overwrite, _, _, same in calls)
    assert calls[0][0] is model.stages[0].blocks[0] and calls[0][4]  # stage 0's first block writes over the stem's
    assert not all(banded for *_, banded, _ in calls)  # the test sees blocks on whole maps too
    with monkeypatch.context() as patch:
        patch.setattr(paca_vit, 'forward_hooks_within', lambda *modules: True)
        expected = run()
    assert not any(overwrite or norm is not None for _, overwrite, norm, *_ in calls)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    run(grad=True)
    assert not any(overwrite for _, overwrite, *_ in calls)
    # a hook on the stem or on stage 1's first block keeps its output, one on a module in stage 2's first block or on
    # stage 3's downsampling may keep a tensor: the blocks after them write new outputs, and the kept outputs stay
    kept = []
    keep = lambda module, args, out: kept.append((out, out.clone()))  # noqa: E731
    model.patch_embed.register_forward_hook(keep)
    model.stages[1].blocks[0].register_forward_hook(lambda m, args, out: keep(m, args, out[0]))
    model.stages[2].blocks[0].norm2.register_forward_hook(lambda *args: None)
    model.stages[3].downsample.register_forward_hook(lambda *args: None)
    hooked_outs = run()
    hooked = {model.stages[0].blocks[0], model.stages[3].blocks[0]}
    hooked |= {model.stages[i].blocks[j] for i in (1, 2) for j in (0, 1)}
    assert [overwrite for block, overwrite, _, banded, _ in calls] == [
        banded and block not in hooked for block, _, _, banded, _ in calls
    ]
    assert len(kept) == 2
    for out, copy in kept:
        torch.testing.assert_close(out, copy, rtol=0, atol=0)
    for out, ref in zip(hooked_outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize('hook', ['forward', 'pre'])
def test_stage_zero_keeps_the_stem_output_that_a_hook_on_the_stage_sees(small_bands, monkeypatch, hook):
    """Stage 0's input is the stem's output itself (its downsampling is an identity): a forward hook or pre-hook on
    stage 0 sees it, and the first block then writes a new output; the later blocks still write over theirs."""
    torch.manual_seed(0)
    small_bands(4 * 8 * 1536)
    model = PaCaViT(arch='tiny', drop_path_rate=0.0).eval()
    images = torch.randn(1, 3, 97, 233)
    calls = _spy_blocks(monkeypatch)
    kept = []
    if hook == 'pre':
        model.stages[0].register_forward_pre_hook(lambda module, args: kept.append((args[0], args[0].clone())))
    else:
        model.stages[0].register_forward_hook(lambda module, args, out: kept.append((args[0], args[0].clone())))
    with torch.no_grad():
        stem = model.patch_embed(images)
        model(images)
    first = model.stages[0].blocks[0]
    assert [overwrite for block, overwrite, _, banded, _ in calls] == [
        banded and block is not first for block, _, _, banded, _ in calls
    ]
    ((seen, copy),) = kept
    torch.testing.assert_close(seen, stem, rtol=0, atol=0)
    torch.testing.assert_close(copy, stem, rtol=0, atol=0)


def test_stage_zero_keeps_the_stem_output_that_the_teacher_reads(small_bands, monkeypatch):
    """With the external clustering teacher the stem's output is read by the teacher too: stage 0's first block does
    not write over it; the later blocks do. The same outputs as without."""
    torch.manual_seed(0)
    small_bands(4 * 8 * 1536)  # stages 0-2 in bands, stage 3 (4 x 8 tokens, 1536 hidden) whole
    model = PaCaViT(arch='tiny_teacher', drop_path_rate=0.0).eval()
    images = torch.randn(1, 3, 97, 233)
    calls = _spy_blocks(monkeypatch)
    with torch.no_grad():
        outs = model(images)
    first = model.stages[0].blocks[0]
    assert [overwrite for block, overwrite, _, banded, _ in calls] == [
        banded and block is not first for block, _, _, banded, _ in calls
    ]
    assert any(overwrite for _, overwrite, *_ in calls)
    assert all(norm is None for _, _, norm, *_ in calls)  # the teacher's feature is added before the stage norm
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(paca_vit, 'forward_hooks_within', lambda *modules: True)
        expected = model(images)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize('grad', [False, True])
def test_last_block_applies_the_stage_norm_in_bands(small_bands, monkeypatch, grad):
    """Where a stage's blocks run in bands, in inference, its last block applies the stage's LayerNorm to its bands
    (the norm's input is read by nothing else): the same outputs as the norm on the whole map. Not with gradients
    (the norm's gradients would be summed band by band): there the outputs and gradients are those of the whole map,
    exactly. Not where a forward hook on the norm or the block expects the whole map: a hook on the norm then sees one
    call."""
    torch.manual_seed(0)
    small_bands(4 * 8 * 1536)  # stages 0-2 in bands, stage 3 (4 x 8 tokens, 1536 hidden) whole
    model = PaCaViT(arch='tiny', drop_path_rate=0.0).train(grad)
    images = torch.randn(1, 3, 97, 233)
    calls = _spy_blocks(monkeypatch)

    def run(fused=True):
        calls.clear()
        model.zero_grad()
        with torch.set_grad_enabled(grad), monkeypatch.context() as patch:
            if not fused:
                patch.setattr(paca_vit, 'forward_hooks_within', lambda *modules: True)
            outs = model(images)
            if grad:
                sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() for out in outs).backward()
        return [out.detach() for out in outs], {n: p.grad.clone() for n, p in model.named_parameters() if grad}

    outs, grads = run()
    lasts = {stage.blocks[-1]: stage.norm for stage in model.stages}
    assert [norm for block, _, norm, _, _ in calls] == [
        lasts[block] if banded and block in lasts and not grad else None for block, _, _, banded, _ in calls
    ]
    assert any(norm is not None for _, _, norm, *_ in calls) != grad and not all(banded for *_, banded, _ in calls)
    expected, expected_grads = run(fused=False)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert grads.keys() == expected_grads.keys()
    for name, ref in expected_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=0, atol=0, msg=lambda msg, name=name: f'{name}: {msg}')
    # a hook on stage 0's norm: the norm runs on the whole map, once
    seen = []
    model.stages[0].norm.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    hooked, _ = run()
    assert seen == [(1, 25 * 59, model.embed_dims[0])]
    assert all(norm is not model.stages[0].norm for _, _, norm, *_ in calls)
    for out, ref in zip(hooked, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize('hooked', [None, 'conv', 'proj', 'norm'])
@pytest.mark.parametrize('size', [(1, 23, 17), (2, 16, 9), (1, 2, 5)])
@pytest.mark.parametrize('num_convs,in_channels', [(2, 3), (1, 8)], ids=['stem', 'downsample'])
@pytest.mark.parametrize('elements', [1, 3 * 5 * 16 * 4], ids=['1-row', 'few-row'])
def test_conv_downsample_in_bands_equals_the_whole_map(
    small_bands, monkeypatch, elements, num_convs, in_channels, size, hooked
):
    """ConvDownsample band by band of output rows, each band's convs on the input rows it needs (the zero padding
    at the map's top and bottom only), with bands of one or a few rows: the whole map's output, channels-last, and
    its gradients. With a forward hook on a conv, on the convs' Sequential or on the norm it runs whole (the hook
    sees one call)."""
    torch.manual_seed(0)
    module = ConvDownsample(in_channels, 16, num_convs)
    x = torch.randn(size[0], in_channels, *size[1:], requires_grad=True)
    small_bands(2**30, 3)
    expected = module(x)
    hook_calls = []
    if hooked is not None:
        hooked_module = {'conv': module.proj[-1], 'proj': module.proj, 'norm': module.norm}[hooked]
        hooked_module.register_forward_hook(lambda *args: hook_calls.append(1))
    calls = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, 'conv2d', lambda *args, **kwargs: calls.append(1) or conv2d(*args, **kwargs))
    small_bands(elements)
    out = module(x)
    # bands sized by the widest map under them, here the input: in_channels * 4**num_convs values per output token
    rows = row_bands.band_height(x, out.shape[-2:], in_channels * 4**num_convs)
    bands = 1 if hooked is not None or rows is None else -(-out.shape[2] // rows)
    assert len(calls) == num_convs * bands and len(hook_calls) == int(hooked is not None)
    assert bands > 1 or size[1] <= 2 or hooked is not None  # the test sees bands
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    cotangent = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, *module.parameters()), cotangent)
    expected_grads = torch.autograd.grad(expected, (x, *module.parameters()), cotangent)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_conv_downsample_of_an_empty_batch():
    """An empty batch gives an empty output, banded or not."""
    module = ConvDownsample(3, 16, num_convs=2)
    assert module(torch.randn(0, 3, 64, 48)).shape == (0, 16, 16, 12)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_conv_downsample_in_bands_under_autocast(small_bands, dtype):
    """Under CPU autocast the bands give the whole map's output in the dtype the norm gives (not the input's)."""
    torch.manual_seed(0)
    module = ConvDownsample(3, 16, num_convs=2).eval()
    x = torch.randn(2, 3, 37, 29)
    outs = []
    for elements, whole_map_bands in ((2**30, 3), (1, 1)):
        small_bands(elements, whole_map_bands)
        with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
            outs.append(module(x))
    assert outs[1].dtype == outs[0].dtype == dtype
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)


@pytest.mark.parametrize('elements', [1, 3 * 13 * 8, 2**30])
def test_tokens_last_output_with_gradients(small_bands, elements):
    """tokens_last: the (B, C', n) bands written into one contiguous (B, C', N) tensor, gradients flowing
    through it."""
    torch.manual_seed(0)
    small_bands(elements)
    weight = torch.randn(8, 1, 3, 3)
    x = torch.randn(2, 17 * 13, 8, requires_grad=True)
    conv = _conv_layer(weight, 1, [])
    expected = conv(x, x, (17, 13), slice(0, 17)).transpose(1, 2)
    transposed = lambda *args: conv(*args).transpose(1, 2)  # noqa: E731
    out = map_row_bands(transposed, x, (17, 13), hidden_dim=4, halo=1, tokens_last=True)
    assert out.is_contiguous() and out.shape == (2, 8, 17 * 13)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)  # halo rows' sums in another order


@pytest.mark.parametrize('elements', [2 * 9 * 32, 2**30], ids=['bands', 'whole'])
@pytest.mark.parametrize('clustering', ['conv', 'mlp'])
def test_clustering_modules_give_the_logits_of_their_equations(small_bands, elements, clustering):
    """ConvClustering (DWConv7x7 + GELU, PWConv + GELU, PWConv) and MlpClustering (Linear + GELU, Linear) on the
    block's input and its LayerNorm: (B, M, N) logits equal to their layers applied to the normalised NCHW map one
    after the other, two samples, in bands (the conv's of 6 rows with 3 of halo, the MLP's of 1 row) or whole, in
    inference and with gradients."""
    from mmcluster.models.backbones.paca_vit import ConvClustering, MlpClustering

    torch.manual_seed(0)
    small_bands(elements)
    dim, clusters, hw = 8, 5, (11, 9)
    module = ConvClustering(dim, clusters) if clustering == 'conv' else MlpClustering(dim, clusters, hidden_ratio=4)
    norm = torch.nn.LayerNorm(dim)
    x = torch.randn(2, hw[0] * hw[1], dim)
    normed = norm(x)
    if clustering == 'conv':
        spatial = rearrange(normed, 'b (h w) c -> b c h w', h=hw[0])
        mixed = F.gelu(module.channel_mix(F.gelu(module.spatial_mix(spatial))))
        expected = module.to_clusters(mixed).flatten(2)
    else:
        expected = module.to_clusters(F.gelu(module.fc(normed))).transpose(1, 2)
    with torch.no_grad():
        out = module(x, hw, norm)
    assert out.shape == (2, clusters, hw[0] * hw[1]) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out = module(x, hw, norm)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.grad_fn is not None


@pytest.mark.parametrize(
    'height,whole_map_elements,bands',
    [(9, 2**30, 1), (10, 2**30, 4), (3, 2**30, 1), (9, 9 * 5 * 4, 1), (9, 9 * 5 * 4 - 1, 3), (3, 0, 1)],
)
def test_maps_of_at_most_whole_map_bands_run_whole(small_bands, monkeypatch, height, whole_map_elements, bands):
    """With bands of 3 rows and WHOLE_MAP_BANDS = 3 a map of up to 9 rows runs in one piece, one of 10 in 4 bands;
    one of 9 rows in 3 bands when its whole intermediate (9 x 5 tokens x 4 channels) has more than
    WHOLE_MAP_ELEMENTS values; one of up to 3 rows (one band) always whole."""
    small_bands(3 * 5 * 4, whole_map_bands=3)
    monkeypatch.setattr(row_bands, 'WHOLE_MAP_ELEMENTS', whole_map_elements)
    calls = []
    x = torch.randn(1, height * 5, 2)
    out = map_row_bands(lambda kept, context, hw, rows: calls.append(hw) or kept, x, (height, 5), 4)
    assert row_bands.band_height(x, (height, 5), 4) == (None if bands == 1 else 3)
    assert len(calls) == bands and torch.equal(out, x)


def test_map_row_bands_runs_whole_maps_off_the_cpu(small_bands):
    small_bands(1)
    calls = []
    x = torch.empty(1, 6 * 4, 3, device='meta')
    out = map_row_bands(lambda kept, context, hw, rows: calls.append((hw, rows)) or kept, x, (6, 4), 3, halo=1)
    assert calls == [((6, 4), slice(0, 6))] and out.shape == x.shape


def test_dwconv_ffn_bands_with_gradients(small_bands):
    torch.manual_seed(0)
    small_bands(2 * 9 * 32)
    ffn = DWConvFFN(8, 32)
    x = torch.randn(2, 11 * 9, 8, requires_grad=True)
    out = ffn(x, (11, 9))
    expected = ffn.forward_map(x, (11, 9))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel_size', [3, 7])
def test_conv_rows_computes_only_the_rows_asked_for(kernel_size):
    """conv_rows equals the whole conv's output sliced to the rows, for every slice of a 9-row map: interior
    ones (no padding rows) and ones at the top, the bottom or both borders (the conv's zero padding)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, kernel_size, padding=kernel_size // 2, groups=6)
    x = torch.randn(2, 6, 9, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        for start in range(9):
            for stop in range(start + 1, 10):
                out = conv_rows(conv, x, slice(start, stop))
                torch.testing.assert_close(out, expected[:, :, start:stop], rtol=1e-6, atol=1e-6)


def test_contiguous_nchw_copies_channels_last_maps_band_by_band(small_bands):
    small_bands(8 * 3 * 7 * 5)  # one row per band (the copy's bands hold an eighth of BAND_ELEMENTS)
    x = torch.randn(3, 5, 11, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = contiguous_nchw(x)
    assert out.is_contiguous() and torch.equal(out, x.detach())
    weight = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    assert torch.equal(grad, weight)
    plain = torch.randn(1, 2, 3, 4)
    assert contiguous_nchw(plain) is plain


def test_soft_assignment_overwrites_its_logits_only_where_asked_in_cpu_fp32_inference():
    """SoftAssignment(overwrite_logits=True) in fp32 CPU inference writes the weights over its contiguous logits
    (no second (B, M, N) tensor), with the values of the out-of-place softmax; with gradients, under autocast, on a
    non-contiguous view, in bf16 or by default (the PaCa head returns its logits too) the logits are left as they
    were. PaCa-ViT's clustering blocks overwrite, their logits being a temporary."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 301) * 3
    expected = logits.softmax(-1)
    assign = SoftAssignment(overwrite_logits=True)
    with torch.no_grad():
        kept = logits.clone()
        weights = assign(kept)
        assert weights.data_ptr() == kept.data_ptr() and torch.equal(weights, expected)
        kept = logits.clone()
        assert torch.equal(SoftAssignment()(kept), expected) and torch.equal(kept, logits)
        strided = logits.clone().transpose(1, 2).contiguous().transpose(1, 2)
        assert torch.equal(assign(strided), expected) and torch.equal(strided, logits)
        half = logits.bfloat16()
        weights = assign(half)
        assert weights.dtype == torch.float32 and torch.equal(half, logits.bfloat16())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            kept = logits.clone()
            weights = assign(kept)
        assert weights.dtype == torch.float32 and torch.equal(kept, logits)
    leaf = logits.clone().requires_grad_(True)
    weights = assign(leaf)
    assert torch.equal(leaf.detach(), logits) and weights.grad_fn is not None
    torch.testing.assert_close(weights, expected)
    model = PaCaViT(arch='tiny')
    overwriting = [m.overwrite_logits for m in model.modules() if isinstance(m, SoftAssignment)]
    assert overwriting and all(overwriting)


def test_pool_clusters_normalises_chunk_by_chunk(small_bands, monkeypatch):
    """With ``norm``, the pooling of the normalised tokens in chunks of tokens equals the pooling of the whole
    normalised map: in fp32, in the tokens' dtype for a half model, and in fp32 under autocast."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(8)
    tokens = torch.randn(2, 95, 8)
    assignment = torch.randn(2, 5, 95).softmax(-1)
    with torch.no_grad():
        expected = assignment @ norm(tokens)
        small_bands(2 * 8 * 10)  # chunks of 10 tokens, the last one shorter
        calls = _onednn_calls(monkeypatch) if row_bands.ONEDNN_LINEAR is not None else []
        torch.testing.assert_close(pool_clusters(assignment, tokens, norm), expected, rtol=1e-6, atol=1e-6)
        if row_bands.ONEDNN_LINEAR is not None:  # each sample's chunk on oneDNN, the chunk's tokens as its weight
            assert calls == [(8, 10)] * 18 + [(8, 5)] * 2
            calls.clear()
        half = pool_clusters(assignment, tokens.bfloat16(), norm.bfloat16())
        assert half.dtype == torch.bfloat16
        with torch.autocast('cpu', dtype=torch.bfloat16):
            pooled = pool_clusters(assignment, tokens, norm.float())
        assert pooled.dtype == torch.float32
        torch.testing.assert_close(pooled, expected, rtol=1e-6, atol=1e-6)
    tokens.requires_grad_(True)  # with gradients the chunks' products (torch.matmul) are summed in the graph
    cotangent = torch.randn_like(expected)
    (grad,) = torch.autograd.grad(pool_clusters(assignment, tokens, norm), tokens, cotangent)
    (expected_grad,) = torch.autograd.grad(assignment @ norm(tokens), tokens, cotangent)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
@pytest.mark.parametrize('batch', [1, 2])
def test_batched_matmul_runs_each_sample_on_onednn(monkeypatch, batch):
    """batched_matmul(a, b) gives torch.matmul's values (the same products summed in another order): in fp32
    inference one oneDNN matmul per sample with the sample of b transposed as its weight, also for a strided a;
    with gradients, in bf16, under autocast and for a b whose samples are strided, torch.matmul."""
    torch.manual_seed(0)
    calls = _onednn_calls(monkeypatch)
    a, b = torch.randn(batch, 5, 300).softmax(-1), torch.randn(batch, 300, 12)
    expected = torch.matmul(a, b)
    with torch.no_grad():
        torch.testing.assert_close(batched_matmul(a, b), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(batched_matmul(a[:, :, :200], b[:, :200]), a[:, :, :200] @ b[:, :200])
        assert calls == [(12, 300)] * batch + [(12, 200)] * batch
        calls.clear()
        strided = torch.randn(batch, 300, 24)[..., ::2]
        torch.testing.assert_close(batched_matmul(a, strided), a @ strided)
        assert batched_matmul(a.bfloat16(), b.bfloat16()).dtype == torch.bfloat16
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert batched_matmul(a, b).dtype == torch.bfloat16
        assert calls == []
    b.requires_grad_(True)
    out = batched_matmul(a, b)
    torch.testing.assert_close(out, expected)
    assert out.grad_fn is not None and calls == []


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_dwconv_ffn_folds_its_shortcut_into_the_conv_in_fp32(dtype):
    """h + DWConv(h) as one conv with 1 added at the kernels' centres, in fp32: the same values as the conv and
    the add. In lower precision the shortcut stays an add (centre weight + 1 would lose the weight's bits)."""
    torch.manual_seed(0)
    ffn = DWConvFFN(8, 16).to(dtype)
    hidden = torch.randn(2, 7 * 5, 16, dtype=dtype)
    spatial = rearrange(hidden, 'b (h w) c -> b c h w', h=7)
    expected = ffn.fc2(ffn.act(rearrange(spatial + ffn.dwconv(spatial), 'b c h w -> b (h w) c')))
    with torch.no_grad():
        out = ffn.mix(hidden, (7, 5), slice(0, 7))
    exact = dtype == torch.bfloat16  # the same ops in the same order
    torch.testing.assert_close(out, expected, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6)
    assert ffn.identity_kernel()[:, 0].sum((-1, -2)).eq(1).all() and ffn.identity_kernel()[:, 0, 1, 1].eq(1).all()


@pytest.mark.skipif(row_bands.FUSED_CONV is None, reason='this torch build has no oneDNN fused convolution')
@pytest.mark.parametrize('kernel_size', [3, 7])
def test_conv_rows_fuses_the_gelu_in_inference(monkeypatch, kernel_size):
    """On the CPU, in fp32 inference, conv_rows runs conv + exact GELU as one oneDNN op: the same values as the
    conv and then F.gelu, for a batch of 2 (bands of a batch are strided views) at the borders and inside."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, kernel_size, padding=kernel_size // 2, groups=6)
    act = torch.nn.GELU()
    x = torch.randn(2, 6, 11, 5).contiguous(memory_format=torch.channels_last)
    calls = []
    fused = row_bands.FUSED_CONV
    monkeypatch.setattr(row_bands, 'FUSED_CONV', lambda *args: calls.append(args[-3]) or fused(*args))
    with torch.no_grad():
        expected = act(conv(x))
        for rows in (slice(0, 4), slice(4, 7), slice(7, 11), slice(0, 11)):
            out = conv_rows(conv, x, rows, act=act)
            torch.testing.assert_close(out, expected[:, :, rows], rtol=1e-6, atol=1e-6)
    assert calls == ['gelu'] * 4
    out = conv_rows(conv, x.requires_grad_(), slice(4, 7), act=act)  # with gradients: conv, then GELU
    assert len(calls) == 4 and out.grad_fn is not None


def _onednn_calls(monkeypatch) -> list:
    """Counts the calls of oneDNN's matmul."""
    calls = []
    onednn = row_bands.ONEDNN_LINEAR
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR', lambda *args: calls.append(args[1].shape) or onednn(*args))
    return calls


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
def test_linear_applies_an_exact_gelu_inside_onednns_matmul(monkeypatch):
    """linear(..., act): an exact GELU is oneDNN's post-op in fp32 inference (no separate GELU), other activations
    (the tanh GELU included) run after the matmul; the values are act(F.linear(...))'s either way."""
    torch.manual_seed(0)
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR_FASTER', True)
    attrs = []
    onednn = row_bands.ONEDNN_LINEAR
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR', lambda *args: attrs.append(args[3]) or onednn(*args))
    x, weight, bias = torch.randn(2, 17, 24), torch.randn(40, 24), torch.randn(40)
    for act in (torch.nn.GELU(), torch.nn.GELU(approximate='tanh'), torch.nn.ReLU()):
        with torch.no_grad():
            out = linear(x, weight, bias, act)
        torch.testing.assert_close(out, act(F.linear(x, weight, bias)), rtol=1e-5, atol=1e-6)
    assert attrs == ['gelu', 'none', 'none']
    x.requires_grad_(True)
    out = linear(x, weight, bias, torch.nn.GELU())  # gradients needed: F.linear, then the module
    torch.testing.assert_close(out, F.gelu(F.linear(x, weight, bias)), rtol=0, atol=0)
    assert out.grad_fn is not None and len(attrs) == 3


@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('with_bias', [False, True])
def test_linear_tokens_last_is_the_transposed_product(monkeypatch, batch, with_bias):
    """linear_tokens_last(x, W, b) equals F.linear(x, W, b).transpose(1, 2) as a contiguous tensor: in fp32
    inference taken as W x^T per sample on oneDNN's matmul (where there is one), with gradients, in bf16 and for
    strided tokens through F.linear and a transposing copy."""
    torch.manual_seed(0)
    calls = _onednn_calls(monkeypatch) if row_bands.ONEDNN_LINEAR is not None else []
    x, weight = torch.randn(batch, 37, 24), torch.randn(10, 24)
    bias = torch.randn(10) if with_bias else None
    expected = F.linear(x, weight, bias).transpose(1, 2)
    with torch.no_grad():
        out = linear_tokens_last(x, weight, bias)
        assert out.shape == (batch, 10, 37) and out.is_contiguous()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        assert calls == ([(37, 24)] * batch if row_bands.ONEDNN_LINEAR is not None else [])
        strided = torch.randn(batch, 37, 48)[..., ::2]
        out = linear_tokens_last(strided, weight, bias)
        assert out.is_contiguous()
        torch.testing.assert_close(out, F.linear(strided, weight, bias).transpose(1, 2))
        out = linear_tokens_last(x.bfloat16(), weight.bfloat16(), None if bias is None else bias.bfloat16())
        assert out.dtype == torch.bfloat16 and out.is_contiguous()
    x.requires_grad_(True)
    out = linear_tokens_last(x, weight, bias)
    torch.testing.assert_close(out, expected)
    assert out.grad_fn is not None and len(calls) == (batch if row_bands.ONEDNN_LINEAR is not None else 0)


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
@pytest.mark.parametrize('onednn_faster', [True, False])
def test_linear_runs_on_onednn_in_fp32_cpu_inference(monkeypatch, onednn_faster):
    """linear() gives F.linear's values (within fp32 rounding: the same products summed in another order) for
    2-D, 3-D and strided inputs, with and without bias, through oneDNN's matmul in fp32 inference only, on a machine
    where that is the faster GEMM: with gradients, under autocast, in bf16, for empty inputs and where the BLAS GEMM
    is faster it is F.linear. onednn_linear() takes oneDNN's matmul in fp32 inference either way."""
    torch.manual_seed(0)
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR_FASTER', onednn_faster)
    calls = _onednn_calls(monkeypatch)
    layer = OneDNNLinear(24, 40)
    wide = torch.randn(3, 17, 48)
    inputs = [torch.randn(30, 24), torch.randn(2, 17, 24), wide[..., ::2], wide[:, 2:9, 24:]]
    with torch.no_grad():
        for x in inputs:
            for bias in (layer.bias, None):
                torch.testing.assert_close(linear(x, layer.weight, bias), F.linear(x, layer.weight, bias))
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert len(calls) == (3 * len(inputs) if onednn_faster else 0)
    with torch.no_grad():
        for x in inputs:
            torch.testing.assert_close(row_bands.onednn_linear(x, layer.weight), F.linear(x, layer.weight))
    assert len(calls) == (4 if onednn_faster else 1) * len(inputs)
    calls.clear()

    x = inputs[1]
    assert layer(x).grad_fn is not None  # gradients needed: F.linear
    assert row_bands.onednn_linear(x, layer.weight).grad_fn is not None
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
        assert linear(x.bfloat16(), layer.weight.bfloat16()).dtype == torch.bfloat16
        assert row_bands.onednn_linear(x.bfloat16(), layer.weight.bfloat16()).dtype == torch.bfloat16
        assert layer(x[:, :0]).shape == (2, 0, 40)
    assert calls == []
    assert OneDNNLinear(24, 40).state_dict().keys() == torch.nn.Linear(24, 40).state_dict().keys()


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
@pytest.mark.parametrize('slower', ['blas_product', 'onednn_product'])
def test_linear_runs_on_the_gemm_measured_faster(monkeypatch, slower):
    """Where ONEDNN_LINEAR_FASTER is None, linear() runs on the GEMM that LINEAR_PROBE measured faster (here one of
    the two is made 50 ms slower), once per thread count, on the first call that could take oneDNN's matmul:
    nothing is measured with gradients, in bf16 or under a FLOP counter (which counts F.linear's product)."""
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR_FASTER', None)
    monkeypatch.setattr(row_bands.LINEAR_PROBE, 'answers', {})
    measured, way = [], getattr(row_bands, slower)

    def slow_way(*args):
        measured.append(slower)
        time.sleep(0.05)
        return way(*args)

    monkeypatch.setattr(row_bands, slower, slow_way)
    calls = _onednn_calls(monkeypatch)
    x, weight = torch.randn(2, 9, 24), torch.randn(40, 24)
    linear(x, weight.requires_grad_())
    weight = weight.detach()
    with torch.no_grad():
        linear(x.bfloat16(), weight.bfloat16())
        with flop_counter() as counter:
            linear(x, weight)
        assert counter.get_total_flops() == 2 * 2 * 9 * 24 * 40
        assert measured == [] and row_bands.LINEAR_PROBE.answers == {} and calls == []
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
        assert len(measured) == 1 + row_bands.PROBE_ROUNDS  # calls of the slowed way (one to warm up), once
        onednn = slower == 'blas_product'
        assert row_bands.onednn_linear_is_faster() == onednn
        assert row_bands.LINEAR_PROBE.answers == {torch.get_num_threads(): onednn}
        calls.clear()
        linear(x, weight)
        assert len(calls) == (1 if onednn else 0) and len(measured) == 1 + row_bands.PROBE_ROUNDS


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
@pytest.mark.parametrize('num_keys', [7, 40], ids=['clusters', 'full'])
def test_multi_head_attention_head_by_head_equals_the_fused_kernel(monkeypatch, num_keys):
    """Head by head on oneDNN (forced by BY_HEAD_PRODUCTS = 0 and BY_HEAD_FASTER), two samples, keys and values as
    the heads of a stacked k/v projection (strided views), scores in chunks of 3 queries, the softmax into a buffer
    of its own (7 keys) or over the scores (40 keys): the fused kernel's values within fp32 rounding, from exactly
    BY_HEAD_PRODUCTS on. Below it, with gradients, in bf16 and with keys broadcast over the queries' batch it is
    the fused kernel."""
    torch.manual_seed(0)
    monkeypatch.setattr(attention, 'BY_HEAD_PRODUCTS', 0)
    monkeypatch.setattr(attention, 'BY_HEAD_FASTER', True)
    monkeypatch.setattr(attention, 'IN_PLACE_SOFTMAX_KEYS', 20)
    in_place = []  # per softmax: written over its input?
    softmax = torch.softmax
    monkeypatch.setattr(
        torch,
        'softmax',
        lambda x, dim, out: in_place.append(out.data_ptr() == x.data_ptr()) or softmax(x, dim, out=out),
    )
    monkeypatch.setattr(attention, 'SCORE_ELEMENTS', 3 * num_keys)  # 40 queries: 13 chunks of 3, then one
    calls = _onednn_calls(monkeypatch)
    heads, head_dim = 3, 8
    queries = torch.randn(2, 40, heads * head_dim)
    keys, values = rearrange(torch.randn(2, num_keys, 2 * heads * head_dim), 'b m (t h d) -> t b h m d', t=2, h=heads)
    expected = F.scaled_dot_product_attention(rearrange(queries, 'b n (h d) -> b h n d', h=heads), keys, values)
    expected = rearrange(expected, 'b h n d -> b n (h d)')
    with torch.no_grad():
        out = multi_head_attention(queries, keys, values)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2 * 2 * heads * 14 and calls[:2] == [(num_keys, head_dim), (head_dim, num_keys)]
    assert len(in_place) == 2 * heads * 14 and set(in_place) == {num_keys >= 20}
    monkeypatch.setattr(torch, 'softmax', softmax)

    products = 40 * num_keys * head_dim
    with torch.no_grad():
        monkeypatch.setattr(attention, 'BY_HEAD_PRODUCTS', products)  # exactly the threshold: head by head
        calls.clear()
        torch.testing.assert_close(multi_head_attention(queries, keys, values), expected, rtol=1e-5, atol=1e-6)
        assert len(calls) == 2 * 2 * heads * 14
        calls.clear()
        monkeypatch.setattr(attention, 'BY_HEAD_PRODUCTS', products + 1)
        torch.testing.assert_close(multi_head_attention(queries, keys, values), expected)
        monkeypatch.setattr(attention, 'BY_HEAD_PRODUCTS', 0)
        assert multi_head_attention(queries.bfloat16(), keys.bfloat16(), values.bfloat16()).dtype == torch.bfloat16
        # keys and values of one sample for two samples of queries: broadcast by the fused kernel
        split = rearrange(queries, 'b n (h d) -> b h n d', h=heads)
        broadcast = rearrange(F.scaled_dot_product_attention(split, keys[:1], values[:1]), 'b h n d -> b n (h d)')
        torch.testing.assert_close(multi_head_attention(queries, keys[:1], values[:1]), broadcast)
    assert multi_head_attention(queries, keys.requires_grad_(), values).grad_fn is not None
    assert calls == []


def test_fused_linear_equals_the_separate_layers():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(12, 12) for _ in range(3)]
    x = torch.randn(2, 50, 12)
    for out, layer in zip(fused_linear(x, layers), layers):
        torch.testing.assert_close(out, layer(x), rtol=1e-6, atol=1e-6)


def _reference_forward(model: PaCaViT, images: torch.Tensor) -> list[torch.Tensor]:
    """PaCa-ViT on contiguous NCHW maps, one GEMM per projection (F.linear's addmm) and whole-map FFNs (onsite
    clustering)."""

    def dense(layer, x):
        return F.linear(x, layer.weight, layer.bias)

    def downsample(module, x):
        for conv in module.proj:
            x = conv(x.contiguous())
        return module.norm(x).contiguous()

    x = downsample(model.patch_embed, images)
    outs = []
    for stage in model.stages:
        if not isinstance(stage.downsample, torch.nn.Identity):
            x = downsample(stage.downsample, x)
        hw = x.shape[-2:]
        tokens = rearrange(x, 'b c h w -> b (h w) c')
        assignment = None
        for block in stage.blocks:
            attn = block.attn
            normed = block.norm1(tokens)
            if attn.num_clusters:
                if attn.clustering is not None:
                    assignment = torch.softmax(attn.clustering(normed, hw), dim=-1)
                context = attn.cluster_norm(assignment @ normed)
            else:
                context = normed
            q, k, v = (
                rearrange(t, 'b n (h d) -> b h n d', h=attn.num_heads)
                for t in (dense(attn.q, normed), dense(attn.k, context), dense(attn.v, context))
            )
            heads = F.scaled_dot_product_attention(q, k, v)
            tokens = tokens + dense(attn.proj, rearrange(heads, 'b h n d -> b n (h d)'))
            hidden = dense(block.mlp.fc1, block.norm2(tokens))
            hidden = rearrange(hidden, 'b (h w) c -> b c h w', h=hw[0]).contiguous()
            hidden = rearrange(hidden + block.mlp.dwconv(hidden), 'b c h w -> b (h w) c')
            tokens = tokens + dense(block.mlp.fc2, block.mlp.act(hidden))
        x = rearrange(stage.norm(tokens), 'b (h w) c -> b c h w', h=hw[0]).contiguous()
        outs.append(x)
    return outs


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
@pytest.mark.parametrize('slower', ['blas_product', 'onednn_product'])
def test_head_by_head_only_where_it_is_measured_faster(monkeypatch, slower):
    """Above BY_HEAD_PRODUCTS the attention runs head by head only where by_head_is_faster measured oneDNN's matmul
    clearly faster than the BLAS GEMM under the fused kernel (here one of the two is made 100 ms slower), once per
    thread count; nothing is measured with gradients, under autocast or under a FLOP counter (whose count stays the
    attention's own, the fused kernel's, also after a measurement); BY_HEAD_FASTER overrides it."""
    monkeypatch.setattr(attention, 'BY_HEAD_PRODUCTS', 0)
    monkeypatch.setattr(attention, 'BY_HEAD_FASTER', None)
    monkeypatch.setattr(attention.BY_HEAD_PROBE, 'answers', {})
    measured = []
    way = getattr(row_bands, slower)

    def slow_way(*args):
        measured.append(slower)
        time.sleep(0.1)
        return way(*args)

    monkeypatch.setattr(row_bands, slower, slow_way)
    by_head = slower == 'blas_product'
    queries, keys, values = torch.randn(1, 40, 24), torch.randn(1, 3, 7, 8), torch.randn(1, 3, 7, 8)
    assert not attention._by_head(queries, keys.requires_grad_(), values)  # gradients: the fused kernel
    keys = keys.detach()
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not attention._by_head(queries, keys, values)
        with flop_counter() as counter:
            assert not attention._by_head(queries, keys, values)
        assert attention.BY_HEAD_PROBE.answers == {} and measured == []
        assert attention._by_head(queries, keys, values) == by_head
        assert len(measured) == 1 + row_bands.PROBE_ROUNDS  # calls of the slowed way (one to warm up), once
        assert attention._by_head(queries, keys, values) == by_head
        threads = torch.get_num_threads()
        assert len(measured) == 1 + row_bands.PROBE_ROUNDS and set(attention.BY_HEAD_PROBE.answers) == {threads}
        with flop_counter() as counter:  # after the measurement too: the fused kernel, counted as such
            assert not attention._by_head(queries, keys, values)
            attention.multi_head_attention(queries, keys, values)
        assert counter.get_total_flops() == 2 * 2 * 40 * 7 * 24
        measured.clear()
        monkeypatch.setattr(torch, 'get_num_threads', lambda: threads + 1)  # another thread count: measured again
        assert attention._by_head(queries, keys, values) == by_head
        assert len(measured) == 1 + row_bands.PROBE_ROUNDS
        assert set(attention.BY_HEAD_PROBE.answers) == {threads, threads + 1}
        for decided in (True, False):
            monkeypatch.setattr(attention, 'BY_HEAD_FASTER', decided)
            assert attention._by_head(queries, keys, values) == decided
    assert len(measured) == 1 + row_bands.PROBE_ROUNDS


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
@pytest.mark.parametrize('probe', ['by_head', 'linear'])
def test_the_probe_times_one_product_on_both_gemms(monkeypatch, probe):
    """A probe's two ways compute the same product, a @ w^T, of the probe's shape: the BLAS one into the buffer it is
    given, oneDNN's into a tensor of its own (as the layers run it), also where linear() would take the BLAS GEMM
    and under autocast."""
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR_FASTER', False)
    calls = _onednn_calls(monkeypatch)
    rows, columns, length = (attention.BY_HEAD_PROBE if probe == 'by_head' else row_bands.LINEAR_PROBE).shape
    a, weight = torch.randn(rows, length), torch.randn(columns, length)
    expected = (a.double() @ weight.double().t()).float()
    out = torch.full((rows, columns), float('nan'))
    with torch.no_grad():
        assert row_bands.blas_product(a, weight, out) is out
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-3)
        onednn = row_bands.onednn_product(a, weight, torch.full_like(out, float('nan')))
    assert onednn.data_ptr() != out.data_ptr() and len(calls) == 1
    torch.testing.assert_close(onednn, expected, rtol=1e-4, atol=1e-3)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # a probe asked under autocast, gradients on: still oneDNN's
        ratios = row_bands.GemmProbe((8, 4, 16), 1.0).measure()
    assert len(ratios) == row_bands.PROBE_ROUNDS and len(calls) == 2 + row_bands.PROBE_ROUNDS


def test_a_probe_decides_by_the_median_ratio_and_its_margin():
    """A probe's decision: oneDNN's matmul only if the median of its per-round ratios (BLAS time / oneDNN time) is at
    least the probe's margin, so a few fast rounds (a slow spell during the BLAS calls) do not decide it, nor does a
    win within the margin. Head by head needs a clear win (BY_HEAD_GEMM_RATIO); linear layers take the faster GEMM."""
    by_head = attention.BY_HEAD_PROBE
    assert by_head.ratio == attention.BY_HEAD_GEMM_RATIO > 1
    few_fast_rounds = [2.1] * 3 + [1.2] * 7  # the best rounds favour oneDNN, the median does not
    assert not by_head.wins(few_fast_rounds)
    assert not by_head.wins([attention.BY_HEAD_GEMM_RATIO - 0.01] * 10)  # faster, but within the margin
    assert by_head.wins([2.1] * 7 + [1.0] * 3)  # Zen 5's 2.0-2.2, with slow rounds
    assert row_bands.LINEAR_PROBE.ratio == row_bands.LINEAR_GEMM_RATIO == 1
    assert row_bands.LINEAR_PROBE.wins([1.05] * 6 + [0.8] * 4)
    assert not row_bands.LINEAR_PROBE.wins([0.85] * 6 + [1.5] * 4)  # Zen 3's 0.81-0.89, with slow rounds


def test_without_onednn_nothing_is_measured(monkeypatch):
    """A torch build without oneDNN's matmul op has no head-by-head way and no choice for linear layers: the probes
    answer False at once."""
    monkeypatch.setattr(attention, 'BY_HEAD_FASTER', None)
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR_FASTER', None)
    for probe in (attention.BY_HEAD_PROBE, row_bands.LINEAR_PROBE):
        monkeypatch.setattr(probe, 'answers', {})
    monkeypatch.setattr(row_bands, 'ONEDNN_LINEAR', None)
    monkeypatch.setattr(row_bands, 'blas_product', lambda *args: pytest.fail('measured without oneDNN'))
    assert not attention.by_head_is_faster() and not row_bands.onednn_linear_is_faster()
    assert attention.BY_HEAD_PROBE.answers == {} and row_bands.LINEAR_PROBE.answers == {}
    with torch.no_grad():
        x, weight = torch.randn(5, 8), torch.randn(3, 8)
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=0, atol=0)


@pytest.mark.skipif(row_bands.ONEDNN_LINEAR is None, reason='this torch build has no oneDNN matmul op')
def test_threads_asking_at_once_share_one_measurement(monkeypatch):
    """Two Python threads whose first attention calls come at once: one measures, the other waits for its answer
    (two measurements at once would time each other)."""
    monkeypatch.setattr(attention, 'BY_HEAD_FASTER', None)
    monkeypatch.setattr(attention.BY_HEAD_PROBE, 'answers', {})
    calls, blas = [], row_bands.blas_product

    def slow_blas(*args):
        calls.append(threading.get_ident())
        time.sleep(0.1)
        return blas(*args)

    monkeypatch.setattr(row_bands, 'blas_product', slow_blas)
    start, answers = threading.Barrier(2), []

    def ask():
        start.wait()
        answers.append(attention.by_head_is_faster())

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True, True]  # the BLAS GEMM, 100 ms slower per call, lost
    assert len(calls) == 1 + row_bands.PROBE_ROUNDS and len(set(calls)) == 1  # one measurement, in one thread


@pytest.mark.parametrize(
    'kwargs',
    [dict(arch='tiny'), dict(arch='tiny', clustering='mlp'), dict(arch='tiny', assignment='block')],
    ids=['conv', 'mlp', 'block'],
)
@pytest.mark.parametrize('by_head', [False, True], ids=['fused', 'by_head'])
def test_backbone_equals_the_plain_composition(small_bands, monkeypatch, kwargs, by_head):
    """Outputs within 1e-5 of the plain NCHW computation, at an odd size, with FFN bands of 2-3 rows in stage 1,
    and with attention head by head on oneDNN where it runs (BY_HEAD_PRODUCTS = 0, BY_HEAD_FASTER)."""
    torch.manual_seed(0)
    small_bands(2 * 60 * 384)
    by_head_runs = []
    if by_head:
        monkeypatch.setattr(attention, 'BY_HEAD_PRODUCTS', 0)
        monkeypatch.setattr(attention, 'BY_HEAD_FASTER', True)
        by_head_of = attention._by_head

        def by_head_spy(*args):
            by_head_runs.append(by_head_of(*args))
            return by_head_runs[-1]

        monkeypatch.setattr(attention, '_by_head', by_head_spy)
    model = PaCaViT(**kwargs, drop_path_rate=0.0).eval()
    images = torch.randn(1, 3, 97, 233)
    with torch.no_grad():
        outs = model(images)
        expected = _reference_forward(model, images)
    assert set(by_head_runs) == ({row_bands.ONEDNN_LINEAR is not None} if by_head else set())  # every band
    for out, ref in zip(outs, expected):
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_drop_path_keeps_or_drops_a_sample_in_every_band(small_bands):
    """DropPath draws one decision per sample and branch for the whole map, not one per band: in training
    the banded block equals the whole-map block under the same random draws, and with drop rate ~1 a block
    whose branches are both dropped passes its input through."""
    from mmcluster.models.backbones.paca_vit import ConvClustering, PaCaBlock

    torch.manual_seed(0)
    block = PaCaBlock(16, 2, 4, ConvClustering(16, 4), drop_path=0.5).train()
    x = torch.randn(4, 9 * 7, 16)
    outs = []
    for elements in (2**30, 2 * 7 * 64):
        small_bands(elements)
        torch.manual_seed(1)
        outs.append(block(x, (9, 7))[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    block.drop_path.drop_prob = 1.0 - 1e-9
    torch.manual_seed(1)
    torch.testing.assert_close(block(x, (9, 7))[0], x)
