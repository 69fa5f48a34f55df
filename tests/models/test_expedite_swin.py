"""Expedite on OpenMMLab's Swin (HourglassSwinTransformer in mmdet's and mmseg's MODELS; spec §5), on small
random Swins against each package's own SwinTransformer and blocks."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.backbones import SwinTransformer as MMDetSwin
from mmdet.models.backbones.swin import SwinBlock, WindowMSA
from mmengine.registry import MODELS
from mmseg.models.backbones import SwinTransformer as MMSegSwin

import mmcluster  # noqa: F401  (hooks the registries)
from mmcluster.apis import load_config
from mmcluster.models.backbones.expedite_swin import ResizableWindowAttention, relative_position_index
from mmcluster.models.register_mmdet import HourglassSwinTransformer as MMDetHourglassSwin
from mmcluster.models.register_mmseg import HourglassSwinTransformer as MMSegHourglassSwin

# a 2-stage Swin (stage 2 holds the hourglass): window 6, stride-8 stage-2 maps
SMALL_SWIN = dict(embed_dims=32, depths=(2, 4), num_heads=(2, 4), window_size=6, strides=(4, 2), out_indices=(0, 1))
HOURGLASS = dict(cluster_after=3, cluster_window=4, num_iters=3, neighbourhood_size=3, num_neighbours=4)
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {'mmdet': (MMDetSwin, MMDetHourglassSwin), 'mmseg': (MMSegSwin, MMSegHourglassSwin)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def swin_pair(package='mmdet', hourglass=None, **kwargs):
    """An upstream Swin with random weights (relative-position tables and LayerNorms too) and the hourglass
    one loaded strictly from its state dict, both in eval mode."""
    upstream_cls, hourglass_cls = PACKAGES[package]
    options = {**SMALL_SWIN, **kwargs}
    upstream = upstream_cls(**options)
    for param in upstream.parameters():
        param.data.normal_(0, 0.2)
    model = hourglass_cls(**options, **{**HOURGLASS, **(hourglass or {})})
    model.load_state_dict(upstream.state_dict(), strict=True)
    upstream.eval()
    return upstream, model.eval()


@pytest.mark.parametrize('package', sorted(PACKAGES))
@pytest.mark.parametrize('size', [(96, 96), (100, 130), (70, 70), (64, 512)])
@torch.no_grad()
def test_cluster_window_equal_to_window_is_upstream(package, size):
    """k = K: exactly the upstream Swin, on sizes whose stage-2 maps are not multiples of the window."""
    upstream, model = swin_pair(package, dict(cluster_window=6))
    image = torch.randn(2, 3, *size)
    for a, e in zip(model(image), upstream(image)):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
    assert model.clusters is None


@pytest.mark.parametrize('package', sorted(PACKAGES))
@torch.no_grad()
def test_full_resolution_is_upstream_and_shapes(package):
    """full_resolution() is the upstream Swin (the later blocks back on K x K windows and the table as it is);
    outside it the outputs have the upstream shapes (the stage is reconstructed) but differ."""
    upstream, model = swin_pair(package)
    for size in ((96, 96), (100, 130), (200, 120)):
        image = torch.randn(2, 3, *size)
        expected = upstream(image)
        with model.full_resolution():
            for a, e in zip(model(image), expected):
                torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
        actual = model(image)
        assert [a.shape for a in actual] == [e.shape for e in expected]
        torch.testing.assert_close(actual[0], expected[0], atol=0, rtol=0)  # stage 1 is before the clustering
        assert not torch.allclose(actual[1], expected[1], atol=1e-3)
        grid = expected[1].shape[-2:]
        padded = tuple(-(-g // 6) * 6 for g in grid)
        assert model.clusters.grid == tuple(grid) and model.clusters.padded_grid == padded
        assert model.clusters.reduced_grid == tuple(p // 6 * 4 for p in padded)


@pytest.mark.parametrize('cluster_window', [1, 2])
@torch.no_grad()
def test_upstream_shifts_survive_clustered_forwards(cluster_window):
    """A clustered forward sets the later blocks' windows to k (shift k // 2: none for k = 1); a following
    forward in full_resolution() must shift the odd blocks by K // 2 again, as upstream does. (Reading the
    shift back from the blocks lost it after a forward with k = 1.)"""
    upstream, model = swin_pair('mmdet', dict(cluster_window=cluster_window))
    image = torch.randn(1, 3, 96, 96)
    expected = upstream(image)
    for _ in range(2):
        model(image)
        assert model.clusters is not None
        with model.full_resolution():
            for a, e in zip(model(image), expected):
                torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
        shifts = [block.attn.shift_size for _, block in model.hourglass_blocks()]
        assert shifts == [0, 3]  # stage-2 blocks 2 and 3: upstream shifts the odd one by K // 2


def test_state_dict_is_upstream():
    upstream, model = swin_pair()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in upstream.state_dict().items()}
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in upstream.named_buffers()]
    back = MMDetSwin(**SMALL_SWIN)
    back.load_state_dict(model.state_dict(), strict=True)


def test_relative_position_index_is_upstreams():
    for window in (1, 4, 7, 12):
        expected = WindowMSA(8, 2, (window, window)).relative_position_index
        assert torch.equal(relative_position_index(window), expected)


def resized_window_msa(source: WindowMSA, window: int) -> WindowMSA:
    """An upstream WindowMSA of the smaller window with the source's weights and its table resized
    bilinearly (spec §5.3), the reference for ResizableWindowAttention."""
    heads = source.num_heads
    reference = WindowMSA(source.embed_dims, heads, (window, window))
    span = 2 * source.window_size[0] - 1
    table = source.relative_position_bias_table.t().reshape(1, heads, span, span)
    table = F.interpolate(table, size=(2 * window - 1,) * 2, mode='bilinear', align_corners=False)
    state = {k: v for k, v in source.state_dict().items() if k != 'relative_position_index'}
    state['relative_position_bias_table'] = table.reshape(heads, -1).t()
    reference.load_state_dict(state, strict=False)
    return reference.eval()


@pytest.mark.parametrize('window', [6, 4, 3])
@pytest.mark.parametrize('masked', [False, True])
@torch.no_grad()
def test_resizable_window_attention_is_upstream_window_msa(window, masked):
    source = WindowMSA(32, 4, (6, 6)).eval()
    torch.nn.init.normal_(source.relative_position_bias_table, std=0.5)
    attention = ResizableWindowAttention(copy.deepcopy(source)).eval()
    reference = source if window == 6 else resized_window_msa(source, window)
    x = torch.randn(2 * 3, window * window, 32)
    mask = None
    if masked:  # 3 windows, -100 between some pairs, as a shifted-window mask
        mask = torch.zeros(3, window * window, window * window)
        mask[1:, :window, window:] = -100.0
    torch.testing.assert_close(attention(x, mask), reference(x, mask), atol=1e-5, rtol=1e-5)
    assert attention.relative_position_bias_table.shape == (11 * 11, 4)  # the parameter is not resized
    with pytest.raises(ValueError, match='square windows'):
        attention(torch.randn(1, 50, 32))


@pytest.mark.parametrize('package', sorted(PACKAGES))
@torch.no_grad()
def test_hourglass_stage_is_window_clustering_then_upstream_blocks(package):
    """The hourglass stage against a composition of its parts: the blocks up to cluster_after; each K x K
    window (zero-padded map) clustered on its own by TokenClustering; upstream SwinBlocks built with k x k
    windows (shifted by k // 2 on odd blocks) and the resized tables on the stitched map; each window
    reconstructed from its own centres; the padding cropped."""
    upstream, model = swin_pair(package)
    image = torch.randn(2, 3, 100, 130)
    x, grid = model.patch_embed(image)
    x, grid, _, _ = model.stages[0](x, grid)
    stage = model.stages[1]
    for block in stage.blocks[:2]:
        x = block(x, grid)
    B, (H, W), C = x.shape[0], grid, x.shape[-1]
    padded = F.pad(x.view(B, H, W, C), (0, 0, 0, (-W) % 6, 0, (-H) % 6))
    nh, nw = padded.shape[1] // 6, padded.shape[2] // 6
    centres = torch.zeros(B, nh * 4, nw * 4, C)
    windows = {}
    for b in range(B):
        for i in range(nh):
            for j in range(nw):
                tokens = padded[b, 6 * i : 6 * i + 6, 6 * j : 6 * j + 6].reshape(1, 36, C)
                clusters = model.token_clustering(tokens, (6, 6), (4, 4))
                windows[b, i, j] = clusters
                centres[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = clusters.centres.view(4, 4, C)
    reduced = centres.reshape(B, -1, C)
    for j, block in enumerate(stage.blocks[2:], start=2):
        reference = SwinBlock(C, 4, 2 * 4 * C // 4 * 2, window_size=4, shift=j % 2 == 1).eval()
        reference.load_state_dict(
            {k: v for k, v in block.state_dict().items() if 'relative_position' not in k}, strict=False
        )
        reference.attn.w_msa = resized_window_msa(upstream.stages[1].blocks[j].attn.w_msa, 4)
        reduced = reference(reduced, (nh * 4, nw * 4))
    reduced = reduced.view(B, nh * 4, nw * 4, C)
    rebuilt = torch.zeros(B, nh * 6, nw * 6, C)
    for (b, i, j), clusters in windows.items():
        refined = reduced[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(1, 16, C)
        rebuilt[b, 6 * i : 6 * i + 6, 6 * j : 6 * j + 6] = model.token_reconstruction(refined, clusters).view(6, 6, C)
    expected = model.norm1(rebuilt[:, :H, :W].reshape(B, H * W, C)).view(B, H, W, C).permute(0, 3, 1, 2)
    torch.testing.assert_close(model(image)[1], expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_maps_that_would_not_shrink_run_as_upstream():
    """A stage-2 map of 8 x 8 pads to 12 x 12 and would stitch to 8 x 8 centres: no clustering, upstream."""
    upstream, model = swin_pair()
    image = torch.randn(1, 3, 64, 64)
    for a, e in zip(model(image), upstream(image)):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
    assert model.clusters is None
    model(torch.randn(1, 3, 96, 96))  # 12 x 12 -> 8 x 8: clustered, and the windows switch back and forth
    assert model.clusters is not None
    for a, e in zip(model(image), upstream(image)):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_hourglass_protocol():
    upstream, model = swin_pair()
    assert [name for name, _ in model.hourglass_blocks()] == ['stages.1.blocks.2', 'stages.1.blocks.3']
    captured = {}
    hooks = [
        block.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name, block in model.hourglass_blocks()
    ]
    image = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        with model.full_resolution():
            model(image)
            originals = {name: model.patch_tokens(o) for name, o in captured.items()}
        model(image)
        reduced = {name: model.patch_tokens(o) for name, o in captured.items()}
    for hook in hooks:
        hook.remove()
    assert captured['stages.1.blocks.3'].shape == (1, 4 * 4 * 3 * 3, 64)  # 13 x 17 -> 18 x 18 -> 12 x 12
    assert {k: v.shape for k, v in reduced.items()} == {k: (1, 13 * 17, 64) for k in originals}
    assert all(v.shape == (1, 13 * 17, 64) for v in originals.values())


@pytest.mark.parametrize(
    'bad, match',
    [
        (dict(cluster_after=1), 'not the last of its stage'),
        (dict(cluster_after=5), 'not the last of its stage'),
        (dict(cluster_after=-1), 'cluster_after'),
        (dict(cluster_after=True), 'cluster_after must be an int'),
        (dict(cluster_window=0), r'cluster_window must be in \[1, window_size = 6\]'),
        (dict(cluster_window=7), r'cluster_window must be in \[1, window_size = 6\]'),
        (dict(cluster_window=4.0), 'cluster_window must be an int'),
        (dict(neighbourhood_size=4), 'neighbourhood_size'),
        (dict(num_neighbours=0), 'num_neighbours'),
    ],
)
def test_bad_arguments(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MMDetHourglassSwin(**SMALL_SWIN, **{**HOURGLASS, **bad})


def test_cluster_after_in_the_first_stage():
    """alpha = 1: clustering in stage 1 after its first block; stage 2 runs on the reconstructed map."""
    upstream, model = swin_pair(hourglass=dict(cluster_after=0))
    image = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        outs = model(image)
    assert [o.shape for o in outs] == [o.shape for o in upstream(image)]
    assert model.clusters.grid == (24, 24) and model.clusters.reduced_grid == (16, 16)


def test_with_cp_same_outputs_and_gradients():
    """with_cp recomputes the later blocks in the backward pass with the windows their forward used."""
    _, plain = swin_pair(drop_path_rate=0.0)  # no random drop path between the two runs
    checkpointed = MMDetHourglassSwin(**SMALL_SWIN, **HOURGLASS, with_cp=True, drop_path_rate=0.0)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 96, 96)
    grads = []
    for model in (plain.train(), checkpointed.train()):
        model.zero_grad()
        sum(o.square().mean() for o in model(image)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, atol=1e-6, rtol=1e-4)


def test_frozen_stages_as_upstream():
    upstream = MMDetSwin(**SMALL_SWIN, frozen_stages=1)
    model = MMDetHourglassSwin(**SMALL_SWIN, **HOURGLASS, frozen_stages=1)
    assert model.train() is model
    upstream.train()
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in upstream.parameters()]


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_autocast_is_finite_and_close(dtype):
    _, model = swin_pair()
    image = torch.randn(1, 3, 100, 130)
    expected = model(image)
    with torch.autocast('cpu', dtype=dtype):
        actual = model(image)
    for a, e in zip(actual, expected):
        assert torch.isfinite(a).all()
        assert (a.float() - e).norm() / e.norm() < 0.05


SWIN_CONFIGS = sorted((ROOT / 'configs' / 'expedite').glob('*swin*.py'))
HOURGLASS_KEYS = {
    'type',
    'cluster_after',
    'cluster_window',
    'num_iters',
    'neighbourhood_size',
    'temperature',
    'num_neighbours',
    'reconstruction_temperature',
}


def upstream_config(path):
    """The config an expedited config inherits (its first ``_base_``), loaded as mmengine does."""
    name = path.read_text().split("_base_ = ['", 1)[1].split("'", 1)[0]
    package, relative = name.split('::')
    module = __import__(package)
    return load_config(str(Path(module.__file__).parent / '.mim' / 'configs' / relative))


def test_there_are_the_swin_configs():
    assert {p.name.split('_')[0] + '/' + p.stem.rsplit('_', 1)[-1] for p in SWIN_CONFIGS} == {
        'mask2former/coco-panoptic',
        'mask2former/coco',
        'mask2former/ade20k-640x640',
        'upernet/ade20k-512x512',
    }


@pytest.mark.parametrize('path', SWIN_CONFIGS, ids=[p.stem for p in SWIN_CONFIGS])
def test_swin_configs_only_add_the_hourglass(path):
    """Each config is its upstream one with the backbone type and the hourglass settings added (the instance
    one also puts in the panoptic config's Swin-L, as mmdet ships no Swin-L instance config)."""
    cfg, upstream = load_config(str(path)), upstream_config(path)
    backbone, base = cfg.model.backbone.to_dict(), upstream.model.backbone.to_dict()
    changed = {k for k in backbone if backbone[k] != base.get(k)}
    if path.stem.endswith('lsj-50e_coco'):
        assert changed - HOURGLASS_KEYS == {'pretrain_img_size', 'embed_dims', 'num_heads', 'window_size', 'init_cfg'}
        assert backbone['window_size'] == 12 and backbone['embed_dims'] == 192
    else:
        assert changed == HOURGLASS_KEYS
    assert backbone['type'] == 'HourglassSwinTransformer' and backbone['cluster_window'] == 8
    cfg.model.backbone = base
    model = {k: v for k, v in cfg.model.to_dict().items() if k != '_scope_'}  # mmengine's mark of mmdet::
    assert model == upstream.model.to_dict() or path.stem.endswith('lsj-50e_coco')


@pytest.mark.parametrize('path', SWIN_CONFIGS, ids=[p.stem for p in SWIN_CONFIGS])
@torch.no_grad()
def test_swin_configs_run_with_clustering(path):
    """The whole model of each config (Swin-L, random weights) predicts on a 376 x 360 image, whose stage-3
    map (24 x 23 after the preprocessor's padding) is clustered to 16 x 16."""
    cfg = load_config(str(path))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    image = torch.randint(0, 256, (3, 376, 360), dtype=torch.uint8)
    meta = dict(img_shape=(376, 360), ori_shape=(376, 360), scale_factor=(1.0, 1.0))
    if cfg.default_scope == 'mmdet':
        from mmdet.structures import DetDataSample as DataSample
    else:
        from mmseg.structures import SegDataSample as DataSample
    (result,) = model.test_step(dict(inputs=[image], data_samples=[DataSample(metainfo=meta)]))
    assert model.backbone.clusters is not None and model.backbone.clusters.reduced_grid == (16, 16)
    if cfg.default_scope == 'mmseg':
        assert result.pred_sem_seg.data.shape == (1, 376, 360)
        assert torch.isfinite(result.seg_logits.data).all()
    else:
        assert result.pred_instances.masks.shape[-2:] == (376, 360)
        assert torch.isfinite(result.pred_instances.scores).all()


def test_upstream_panoptic_state_dict_loads_strictly():
    """mmdet's Mask2Former Swin-L and the expedited one have the same state dict (a checkpoint of the first
    loads into the second with nothing missing or unexpected)."""
    path = next(p for p in SWIN_CONFIGS if p.stem.endswith('coco-panoptic'))
    models = []
    for cfg in (upstream_config(path), load_config(str(path))):
        cfg.model.backbone.init_cfg = None
        models.append(MODELS.build(cfg.model))
    models[1].load_state_dict(models[0].state_dict(), strict=True)


def test_readme_swin_three_statement_config(tmp_path):
    """The Swin how-to of configs/expedite/README.md, pasted verbatim: mmdet's Mask2Former Swin-B with the
    hourglass backbone; its backbone builds from the config and clusters a 384 x 384 image's stage 3."""
    readme = (ROOT / 'configs' / 'expedite' / 'README.md').read_text()
    snippet = readme.split('and to an mmdet or mmseg Swin config too')[1].split('```python\n')[1].split('```')[0]
    path = tmp_path / 'mask2former_swin-b-hourglass.py'
    path.write_text(snippet)
    cfg = load_config(str(path))
    assert (cfg.model.backbone.embed_dims, cfg.model.backbone.window_size) == (128, 12)
    cfg.model.backbone.init_cfg = None
    backbone = MODELS.build(cfg.model.backbone)
    assert isinstance(backbone, MMDetHourglassSwin)
    with torch.no_grad():
        outs = backbone.eval()(torch.randn(1, 3, 384, 384))
    assert [o.shape[1] for o in outs] == [128, 256, 512, 1024]
    assert backbone.clusters.grid == (24, 24) and backbone.clusters.reduced_grid == (16, 16)
