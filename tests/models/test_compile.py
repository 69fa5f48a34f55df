"""torch.compile on every backbone and head of mmcluster: each forward is captured as one graph with no graph
break (the ``torch._dynamo.explain`` summary, from its backend ``ExplainWithBackend``; the failure lists every
distinct break with its place in the code), and the compiled module gives the eager outputs.

The graphs run on the ``eager`` backend (``aot_eager`` for the training step): Dynamo's capture is what is
tested, and it stays fast on a small CPU, where Inductor takes far longer. Small models on small inputs, with
sizes that are not multiples of 32 in every family (the models take any size). PaCa-ViT's banded CPU path (the
one it takes at detection resolutions) is tested too, on the eager backend and, once, on Inductor."""

from __future__ import annotations

import pytest
import timm
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS
from torch._dynamo.backends.debugging import ExplainWithBackend

import mmcluster  # noqa: F401  (hooks the registries)
import mmcluster.models.layers.row_bands as row_bands
from mmcluster.models.backbones.expedite import HourglassVisionTransformer
from mmcluster.models.backbones.paca_vit import PaCaViT
from mmcluster.models.backbones.secvit import SecViT, SecViTClassifier
from mmcluster.models.register_mmdet import HourglassSwinTransformer as MMDetHourglassSwin
from mmcluster.models.register_mmseg import HourglassSwinTransformer as MMSegHourglassSwin

PACA_SMALL = dict(embed_dims=(32, 64, 96, 128), depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8))
SECVIT_SMALL = dict(embed_dims=(32, 64, 96, 128), depths=(1, 2, 1, 1), num_heads=(2, 4, 6, 8))
# as tests/models/test_expedite_*.py: a 4-block ViT (patch 16) and a 2-stage Swin with window 6
SMALL_VIT = dict(img_size=(64, 96), patch_size=16, embed_dims=64, num_layers=4, num_heads=4, mlp_ratio=2)
VIT_HOURGLASS = dict(cluster_after=1, cluster_grid=2, num_iters=3, neighbourhood_size=3, num_neighbours=4)
SMALL_SWIN = dict(embed_dims=32, depths=(2, 4), num_heads=(2, 4), window_size=6, strides=(4, 2), out_indices=(0, 1))
SWIN_HOURGLASS = dict(cluster_after=3, cluster_window=4, num_iters=3, neighbourhood_size=3, num_neighbours=4)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _user_frames(reason) -> str:
    """The frames of a graph break's user stack outside site-packages, innermost first, as file:line."""
    frames = [f for f in reason.user_stack if 'site-packages' not in f.filename] or reason.user_stack[-1:]
    return ' <- '.join(f'{f.filename.split("/mmcluster/")[-1]}:{f.lineno} ({f.name})' for f in reversed(frames))


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flatten(item)]


def compile_single_graph(fn, backend: str = 'eager'):
    """``torch.compile(fn)`` on ``backend``, and a check to call after running it: all its calls ran one graph,
    captured once (no graph break, no recompilation)."""
    torch._dynamo.reset()
    recorder = ExplainWithBackend(backend)
    compiled = torch.compile(fn, backend=recorder)

    def check() -> None:
        explanation = recorder.output()  # what torch._dynamo.explain reports, over every call
        breaks = dict.fromkeys(
            f'{r.reason.strip().splitlines()[0]} at {_user_frames(r)}' for r in explanation.break_reasons
        )
        recompiled = explanation.graph_count - len(explanation.break_reasons) - 1
        assert explanation.graph_count == 1 and explanation.graph_break_count == 0, (
            f'{explanation.graph_count} graphs, {len(explanation.break_reasons)} graph breaks'
            + (f', {recompiled} recompilations (TORCH_LOGS=recompiles names the guards)' if recompiled > 0 else '')
            + ''.join(f'\n{b}' for b in breaks)
        )

    return compiled, check


def assert_compiles(fn, *args) -> None:
    """Compiled, ``fn(*args)`` is one graph without breaks, a second call reuses it (no recompilation: the
    forward leaves no state that its guards see changed), and it gives the eager outputs (no grad)."""
    compiled, check = compile_single_graph(fn)
    with torch.no_grad():
        compiled(*args)
        actual = _flatten(compiled(*args))
        check()
        expected = _flatten(fn(*args))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def image(height: int, width: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width)


# ---------------------------------------------------------------------------------------------------------
# PaCa-ViT


@pytest.mark.parametrize(
    'kwargs, size',
    [
        (dict(num_clusters=(8, 8, 8, 0)), (72, 88)),  # onsite conv clustering, stage-wise assignment
        (dict(arch=dict(PACA_SMALL, depths=(1, 1, 1, 1)), num_clusters=(8, 8, 8, 0), clustering='mlp'), (64, 64)),
        (dict(num_clusters=(8, 8, 8, 8), assignment='block'), (64, 64)),
        (dict(arch=dict(PACA_SMALL, teacher_depths=(1, 1, 1, 1)), num_clusters=(8, 8, 8, 8)), (72, 88)),
    ],
    ids=['conv', 'mlp', 'block-wise', 'teacher'],
)
def test_paca_backbone(kwargs, size):
    model = PaCaViT(**{'arch': PACA_SMALL, **kwargs}).eval()
    assert_compiles(model, image(*size))


@pytest.fixture
def stage0_bands(small_bands):
    """On CPUs PaCa-ViT runs its token-local layers band by band once a layer's hidden map exceeds
    ``row_bands.BAND_ELEMENTS`` (2**22 values: detection resolutions). Lowered here so that a 72 x 88 image runs
    its stage-0 blocks (18 x 22 tokens) and clustering, and its stage-1 blocks (9 x 11), in bands; checked."""
    small_bands(2**13)
    dims = PACA_SMALL['embed_dims']
    tokens = torch.empty(1, 18 * 22, dims[0])
    assert row_bands.band_height(tokens, (18, 22), dims[0], halo=3) is not None  # the 7x7 clustering conv
    for hw, dim in [((18, 22), dims[0]), ((9, 11), dims[1])]:
        tokens = torch.empty(1, hw[0] * hw[1], dim)
        assert row_bands.band_height(tokens, hw, 4 * dim, halo=1) is not None  # the block (4 * dim in the FFN)
    return image(72, 88)


@pytest.mark.parametrize('clustering', ['conv', 'mlp'])
def test_paca_backbone_on_bands(stage0_bands, clustering):
    model = PaCaViT(dict(PACA_SMALL, depths=(1, 2, 1, 1)), num_clusters=(8, 8, 8, 0), clustering=clustering).eval()
    assert_compiles(model, stage0_bands)


def test_paca_inductor_on_bands(stage0_bands):
    """torch.compile's default backend, Inductor, on the banded path, against eager. It failed at 800 x 1280
    before 2026-11-24: the depth-wise convs ran through oneDNN's fused conv + GELU op, whose fake kernel gives
    a band of a channels-last map NCHW strides, and Inductor's generated code asserts the strides it traced."""
    model = PaCaViT(dict(PACA_SMALL, depths=(1, 1, 1, 1)), num_clusters=(8, 8, 8, 0)).eval()
    with torch.no_grad():
        expected = model(stage0_bands)
        actual = torch.compile(model, fullgraph=True)(stage0_bands)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_paca_timm_classifier():
    """timm's ``paca_tiny`` entry point (the classifier class, head included) with a smaller arch."""
    model = timm.create_model('paca_tiny', arch=PACA_SMALL, num_clusters=(8, 8, 8, 0), num_classes=10).eval()
    x = image(64, 80)
    assert_compiles(model, x)
    assert_compiles(model.forward_features, x)
    assert_compiles(model.forward_intermediates, x)


def test_paca_head():
    head = MMSEG_MODELS.build(
        dict(
            type='PaCaHead',
            in_channels=[32, 64, 96, 128],
            in_index=[0, 1, 2, 3],
            channels=16,
            num_classes=5,
            norm_cfg=dict(type='BN'),
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        )
    ).eval()
    # the stage maps of a 72 x 88 image: (18, 22), (9, 11), (5, 6), (3, 3)
    sizes = [(18, 22), (9, 11), (5, 6), (3, 3)]
    feats = [torch.randn(2, c, *s) for c, s in zip((32, 64, 96, 128), sizes)]
    assert_compiles(head, feats)


@pytest.mark.parametrize('banded', [False, True], ids=['whole-maps', 'bands'])
def test_paca_training_step(banded, request):
    """Training mode, forward and backward through AOTAutograd: one graph, and the eager gradients; on whole
    maps and on the banded path (with gradients it concatenates each band's context)."""
    arch = dict(PACA_SMALL, depths=(1, 1, 1, 1))
    model = PaCaViT(arch, num_clusters=(8, 8, 8, 0), drop_path_rate=0.0).train()
    x = image(72, 88, batch=2)
    if banded:
        request.getfixturevalue('stage0_bands')  # with batch 2 the bands are half as high

    def step(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        module.zero_grad(set_to_none=True)
        loss = sum(out.square().mean() for out in module(x))
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    compiled, check = compile_single_graph(model, backend='aot_eager')
    step(compiled)
    actual = step(compiled)
    check()
    expected = step(model)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------------
# SecViT and SEC-Swin


@pytest.mark.parametrize(
    'kwargs, size',
    [(dict(num_clusters=(5, 4, 4, 0)), (72, 88)), (dict(tokens_per_cluster=16), (80, 100))],
    ids=['num_clusters', 'tokens_per_cluster'],
)
def test_secvit_backbone(kwargs, size):
    """Fixed cluster counts and counts that follow N (32 clusters over 500 tokens); no count divides its N, so
    every clustered stage takes the padded, masked path."""
    assert_compiles(SecViT(SECVIT_SMALL, **kwargs).eval(), image(*size))


def test_secvit_classifier():
    """The timm classifier (``secvit_*``: the 1x1 conv / BN / SiLU projection and the conv classifier) with a
    smaller arch (the timm entry points fix theirs)."""
    model = SecViTClassifier(SECVIT_SMALL, num_clusters=(4, 3, 2, 0), num_classes=10).eval()
    assert_compiles(model, image(72, 72))


def test_sec_swin():
    model = MMDET_MODELS.build(
        dict(
            type='SECSwinTransformer',
            arch=None,
            embed_dims=32,
            depths=(1, 1),
            num_heads=(2, 4),
            strides=(4, 2),
            out_indices=(0, 1),
            num_clusters=(3, 2),
        )
    ).eval()
    assert_compiles(model, image(72, 88))


# ---------------------------------------------------------------------------------------------------------
# Expedite


@pytest.mark.parametrize('reconstruct', ['backbone', 'decode_head'])
def test_hourglass_vit(reconstruct):
    model = HourglassVisionTransformer(**SMALL_VIT, **VIT_HOURGLASS, reconstruct=reconstruct)
    model.eval()  # mmseg's ViT.train returns None
    x = image(80, 112)  # a 5 x 7 token grid, clustered to 2 x 2
    assert_compiles(model, x)
    assert model.clusters is not None and model.clusters.cluster_grid == (2, 2)


@pytest.mark.parametrize('hourglass_cls', [MMDetHourglassSwin, MMSegHourglassSwin], ids=['mmdet', 'mmseg'])
def test_hourglass_swin(hourglass_cls):
    model = hourglass_cls(**SMALL_SWIN, **SWIN_HOURGLASS).eval()
    x = image(100, 130)  # stage 2 on a 13 x 17 map: padded to 18 x 18, 3 x 3 windows of 6 x 6 -> 4 x 4
    assert_compiles(model, x)
    assert model.clusters is not None and model.clusters.reduced_grid == (12, 12)
