"""Expedite on mmseg's plain ViT: HourglassVisionTransformer and HourglassEncoderDecoder (spec §1, §4.1), on
small random models against mmseg's own VisionTransformer and Segmenter."""

import copy
import functools
import os
from pathlib import Path

import pytest
import torch
from mmengine import Config, ConfigDict
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

import mmcluster  # noqa: F401  (hooks the registries)
from mmcluster.models.backbones.expedite import HourglassEncoderDecoder, HourglassVisionTransformer

CONFIG = os.path.join(
    os.path.dirname(__file__),
    '..',
    '..',
    'configs',
    'expedite',
    'segmenter_vit-l-hourglass-28x28_mask_8xb1-160k_ade20k-640x640.py',
)
# a small ViT: 64 x 96 images, patch 16 -> a 4 x 6 token grid
SMALL_VIT = dict(img_size=(64, 96), patch_size=16, embed_dims=64, num_layers=4, num_heads=4, mlp_ratio=2)
HOURGLASS = dict(cluster_after=1, num_iters=3, neighbourhood_size=3, num_neighbours=4)
NUM_CLASSES = 5
HOURGLASS_KEYS = (
    'cluster_after',
    'cluster_grid',
    'num_iters',
    'neighbourhood_size',
    'temperature',
    'reconstruct',
    'num_neighbours',
    'reconstruction_temperature',
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def vit_pair(hourglass=None, **kwargs):
    """An upstream ViT with random weights and the hourglass one with its state dict, both in eval mode."""
    upstream = VisionTransformer(**SMALL_VIT, **kwargs)
    upstream.init_weights()
    hourglass = HourglassVisionTransformer(**SMALL_VIT, **kwargs, **{**HOURGLASS, **(hourglass or {})})
    hourglass.load_state_dict(upstream.state_dict(), strict=True)
    upstream.eval()  # mmseg's ViT.train returns None, not the model
    hourglass.eval()
    return upstream, hourglass


@functools.lru_cache(maxsize=1)
def config():
    return Config.fromfile(CONFIG)


def segmenter_cfg(hourglass=True, **backbone):
    """The config's Segmenter (mmseg's ViT-L one) with small sizes; its upstream twin when not hourglass."""
    model = copy.deepcopy(config().model)
    model.pretrained = None
    model.data_preprocessor = None
    model.backbone.update(SMALL_VIT, drop_path_rate=0.0, **HOURGLASS, **backbone)
    model.decode_head.update(
        in_channels=64, channels=64, embed_dims=64, num_heads=4, num_layers=2, num_classes=NUM_CLASSES
    )
    model.test_cfg = dict(mode='whole')
    if not hourglass:
        model.type = 'EncoderDecoder'
        model.backbone = {k: v for k, v in model.backbone.items() if k not in HOURGLASS_KEYS}
        model.backbone.update(type='VisionTransformer')
    return model


def segmenter_pair(**backbone):
    upstream = MODELS.build(segmenter_cfg(hourglass=False))
    upstream.init_weights()
    hourglass = MODELS.build(segmenter_cfg(**backbone))
    hourglass.load_state_dict(upstream.state_dict(), strict=True)
    return upstream.eval(), hourglass.eval()


def metas(image):
    return [dict(img_shape=tuple(image.shape[-2:]), ori_shape=tuple(image.shape[-2:]))] * image.shape[0]


@pytest.mark.parametrize('reconstruct', ['backbone', 'decode_head'])
@pytest.mark.parametrize(
    'options',
    [
        dict(out_indices=(1, 3), final_norm=True),
        dict(out_indices=(0, 2, 3), out_origin=True, output_cls_token=True, pre_norm=True),
        dict(out_indices=3, with_cls_token=False),
    ],
)
@torch.no_grad()
def test_identity_grid_is_upstream(reconstruct, options):
    """cluster_grid == the token grid: exactly the upstream ViT (also on another input size: the grid is
    per input, the position embedding is resized as upstream)."""
    for size, grid in (((64, 96), (4, 6)), ((80, 48), (5, 3))):
        upstream, hourglass = vit_pair(dict(cluster_grid=grid, reconstruct=reconstruct), **options)
        image = torch.randn(2, 3, *size)
        expected, actual = upstream(image), hourglass(image)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            for a_i, e_i in zip(*((a, e) if isinstance(e, list) else ([a], [e]))):
                torch.testing.assert_close(a_i, e_i, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_identity_grid_segmenter_is_upstream():
    """decode_head mode, cluster_grid == token grid: the segmentor's logits are mmseg's Segmenter's, for
    whole and slide inference and the tensor-mode forward."""
    upstream, hourglass = segmenter_pair(cluster_grid=(4, 6), reconstruct='decode_head')
    image = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(hourglass.inference(image, metas(image)), upstream.inference(image, metas(image)))
    torch.testing.assert_close(hourglass._forward(image), upstream._forward(image), atol=1e-4, rtol=1e-4)
    for model in (upstream, hourglass):
        model.test_cfg = ConfigDict(mode='slide', crop_size=(64, 64), stride=(32, 32))  # 4 x 4 grids: use (4, 4)
    hourglass.backbone.cluster_grid = (4, 4)
    torch.testing.assert_close(hourglass.inference(image, metas(image)), upstream.inference(image, metas(image)))


def test_state_dict_is_upstream():
    upstream, hourglass = vit_pair(dict(cluster_grid=2), final_norm=True, pre_norm=True)
    assert list(hourglass.state_dict()) == list(upstream.state_dict())
    assert [n for n, _ in hourglass.named_buffers()] == [n for n, _ in upstream.named_buffers()]
    fresh = HourglassVisionTransformer(**SMALL_VIT, final_norm=True, pre_norm=True, cluster_grid=2, **HOURGLASS)
    fresh.load_state_dict(upstream.state_dict(), strict=True)
    up_seg, hg_seg = segmenter_pair(cluster_grid=2)
    assert list(hg_seg.state_dict()) == list(up_seg.state_dict())


@pytest.mark.parametrize(
    'size, grid, cluster_grid',
    [((64, 96), (4, 6), (2, 3)), ((64, 96), (4, 6), 3), ((70, 100), (5, 7), (3, 4)), ((96, 64), (6, 4), (4, 2))],
)
@torch.no_grad()
def test_cluster_shapes(size, grid, cluster_grid):
    """Smaller cluster grids, non-square and non-divisible inputs (70 x 100 is padded to 5 x 7 tokens):
    backbone mode gives token-grid maps, decode_head mode cluster-grid ones after the clustering."""
    h, w = (cluster_grid, cluster_grid) if isinstance(cluster_grid, int) else cluster_grid
    image = torch.randn(2, 3, *size)
    options = dict(out_indices=(0, 1, 2, 3), final_norm=True, output_cls_token=True)
    _, back = vit_pair(dict(cluster_grid=cluster_grid, reconstruct='backbone'), **options)
    outs = back(image)
    assert [tuple(o.shape) for o, _ in outs] == [(2, 64, *grid)] * 4
    assert [tuple(c.shape) for _, c in outs] == [(2, 64)] * 4
    assert back.clusters.grid == grid and back.clusters.cluster_grid == (h, w)
    head = HourglassVisionTransformer(**SMALL_VIT, **options, **{**HOURGLASS, 'cluster_grid': cluster_grid})
    head.reconstruct = 'decode_head'
    head.load_state_dict(back.state_dict())
    head.eval()
    outs_head = head(image)
    assert [tuple(o.shape[-2:]) for o, _ in outs_head] == [grid, grid, (h, w), (h, w)]
    assert head.clusters.grid == grid and head.clusters.cluster_grid == (h, w)
    # outputs up to cluster_after are the same; the later ones are backbone mode's after reconstruction
    for (a, cls_a), (b, cls_b) in zip(outs, outs_head):
        torch.testing.assert_close(cls_a, cls_b)
        torch.testing.assert_close(a, head.reconstruct_map(b))
    torch.testing.assert_close(outs[0][0], outs_head[0][0])


@pytest.mark.parametrize('mode', ['whole', 'slide'])
@torch.no_grad()
def test_segmenter_shapes(mode):
    """decode_head mode: the head runs on the cluster grid, the logits are reconstructed to the token grid
    (tensor mode) and resized to the image (whole) or each crop (slide)."""
    _, model = segmenter_pair(cluster_grid=(3, 4), reconstruct='decode_head')
    image = torch.randn(1, 3, 70, 100)  # 5 x 7 tokens
    feats = model.extract_feat(image)
    assert tuple(feats[-1].shape[-2:]) == (3, 4)
    assert tuple(model.decode_head.forward(feats).shape) == (1, NUM_CLASSES, 3, 4)
    assert tuple(model._forward(image).shape) == (1, NUM_CLASSES, 5, 7)
    if mode == 'slide':
        model.test_cfg = ConfigDict(mode='slide', crop_size=(64, 80), stride=(32, 40))  # 4 x 5 tokens per crop
    logits = model.inference(image, metas(image))
    assert tuple(logits.shape) == (1, NUM_CLASSES, 70, 100) and logits.isfinite().all()
    assert model.backbone.clusters.grid == ((4, 5) if mode == 'slide' else (5, 7))


@torch.no_grad()
def test_later_blocks_run_on_cluster_tokens():
    _, model = vit_pair(dict(cluster_grid=(2, 3)))
    seen = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, args[0].shape[1]))
    model(torch.randn(1, 3, 64, 96))
    assert seen == {0: 1 + 24, 1: 1 + 24, 2: 1 + 6, 3: 1 + 6}


def test_bad_arguments():
    with pytest.raises(ValueError, match='cluster_after'):
        HourglassVisionTransformer(**SMALL_VIT, cluster_after=3, cluster_grid=2)  # the last block
    with pytest.raises(ValueError, match='cluster_after'):
        HourglassVisionTransformer(**SMALL_VIT, cluster_after=-1, cluster_grid=2)
    with pytest.raises(ValueError, match='reconstruct'):
        HourglassVisionTransformer(**SMALL_VIT, cluster_after=1, cluster_grid=2, reconstruct='neck')
    with pytest.raises(ValueError, match='cluster_grid'):
        HourglassVisionTransformer(**SMALL_VIT, cluster_after=1, cluster_grid=(2, 0))


@torch.no_grad()
def test_cluster_grid_larger_than_the_input_is_reduced_to_it():
    """6 x 4 tokens with cluster_grid (3, 5): 3 x 4 centres (the width axis is not clustered); with (8, 8) no
    axis is clustered and the output is upstream's."""
    model = HourglassVisionTransformer(**SMALL_VIT, cluster_after=1, cluster_grid=(3, 5), reconstruct='decode_head')
    model.eval()
    assert model.cluster_grid_for((6, 4)) == (3, 4)
    assert tuple(model(torch.randn(1, 3, 96, 64))[-1].shape[-2:]) == (3, 4)
    upstream, hourglass = vit_pair(dict(HOURGLASS, cluster_grid=(8, 8)))
    image = torch.randn(1, 3, 96, 64)
    torch.testing.assert_close(hourglass(image)[-1], upstream(image)[-1], rtol=0, atol=1e-4)


@pytest.mark.parametrize('reconstruct', ['backbone', 'decode_head'])
@torch.no_grad()
def test_bf16_autocast_is_finite(reconstruct):
    _, model = segmenter_pair(cluster_grid=(3, 4), reconstruct=reconstruct)
    image = torch.randn(1, 3, 64, 96)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model.inference(image, metas(image))
    assert tuple(logits.shape) == (1, NUM_CLASSES, 64, 96) and logits.float().isfinite().all()


def test_config_resolves():
    """The ADE20K config parses after ``import mmcluster`` and names our two classes with spec §9's
    settings; built here with small sizes only (a forward runs in the tests above)."""
    cfg = config()
    assert MODELS.get(cfg.model.type) is HourglassEncoderDecoder
    assert MODELS.get(cfg.model.backbone.type) is HourglassVisionTransformer
    backbone = cfg.model.backbone
    assert (backbone.embed_dims, backbone.num_layers, backbone.img_size) == (1024, 24, (640, 640))
    assert (backbone.cluster_after, tuple(backbone.cluster_grid), backbone.reconstruct) == (9, (28, 28), 'decode_head')
    settings = ('num_iters', 'neighbourhood_size', 'temperature', 'num_neighbours', 'reconstruction_temperature')
    assert [backbone[k] for k in settings] == [5, 5, 0.02, 20, 0.02]


def test_readme_three_statement_config(tmp_path):
    """The ViT how-to of configs/expedite/README.md, pasted verbatim into a config file: mmseg's Segmenter
    ViT-S with the hourglass; it parses, the types and the upstream sizes are there, and the segmentor
    clusters a 512 x 512 image's 32 x 32 tokens into 24 x 24 and predicts at full size."""
    readme = (Path(CONFIG).parents[0] / 'README.md').read_text()
    snippet = readme.split('takes three statements')[1].split('```python\n')[1].split('```')[0]
    path = tmp_path / 'segmenter_vit-s-hourglass.py'
    path.write_text(snippet)
    cfg = Config.fromfile(str(path))
    assert MODELS.get(cfg.model.type) is HourglassEncoderDecoder
    assert MODELS.get(cfg.model.backbone.type) is HourglassVisionTransformer
    assert (cfg.model.backbone.embed_dims, cfg.model.backbone.num_layers) == (384, 12)
    assert (cfg.model.backbone.cluster_after, tuple(cfg.model.backbone.cluster_grid)) == (5, (24, 24))
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    image = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        logits = model.inference(image, metas(image))
    assert logits.shape == (1, 150, 512, 512) and torch.isfinite(logits).all()
    assert model.backbone.clusters.grid == (32, 32) and model.backbone.clusters.cluster_grid == (24, 24)


def test_vit_b_config_only_adds_the_hourglass():
    """The ViT-B config is mmseg's Segmenter ViT-B with the hourglass types and settings, nothing else."""
    path = Path(CONFIG).parent / 'segmenter_vit-b-hourglass-24x24_mask_8xb1-160k_ade20k-512x512.py'
    cfg = Config.fromfile(str(path))
    from mmcluster.apis import package_config_path

    upstream = Config.fromfile(package_config_path('mmseg::segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py'))
    backbone = cfg.model.backbone.to_dict()
    assert {k for k in backbone if backbone[k] != upstream.model.backbone.get(k)} == {'type', *HOURGLASS_KEYS}
    assert (backbone['cluster_after'], backbone['cluster_grid']) == (5, (24, 24))
    model = {k: v for k, v in cfg.model.to_dict().items() if k not in ('backbone', 'type', '_scope_')}
    assert model == {k: v for k, v in upstream.model.to_dict().items() if k not in ('backbone', 'type')}
    assert cfg.model.type == 'HourglassEncoderDecoder'


@pytest.mark.parametrize('size', [8, 12, 16, 20, 24])
def test_table_3_configs_change_only_the_cluster_grid(size):
    """The paper's Table 3 rows: the 28x28 config with another cluster grid, nothing else."""
    path = CONFIG.replace('28x28', f'{size}x{size}')
    cfg, default = Config.fromfile(path), config()
    assert tuple(cfg.model.backbone.cluster_grid) == (size, size)
    cfg.model.backbone.cluster_grid = default.model.backbone.cluster_grid
    assert cfg.model.to_dict() == default.model.to_dict()


@torch.no_grad()
def test_hourglass_protocol():
    """full_resolution() is exactly the upstream ViT; hourglass_blocks() are the blocks after cluster_after;
    patch_tokens() reconstructs their outputs of the last forward (and drops the class token)."""
    upstream, hourglass = vit_pair(dict(cluster_grid=(2, 3)), out_indices=(3,), final_norm=True)
    image = torch.randn(2, 3, 64, 96)
    assert [name for name, _ in hourglass.hourglass_blocks()] == ['layers.2', 'layers.3']
    captured = {}
    handles = [
        block.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name, block in hourglass.hourglass_blocks()
    ]
    with hourglass.full_resolution():
        full = hourglass(image)
        assert hourglass.clusters is None
        originals = {name: hourglass.patch_tokens(o) for name, o in captured.items()}
    torch.testing.assert_close(full[0], upstream(image)[0], rtol=0, atol=0)
    reduced = hourglass(image)
    assert reduced[0].shape == full[0].shape and hourglass.clusters.cluster_grid == (2, 3)
    for handle in handles:
        handle.remove()
    for name, output in captured.items():
        assert output.shape == (2, 1 + 6, 64)  # class token + 2 x 3 centres
        tokens = hourglass.patch_tokens(output)
        assert tokens.shape == originals[name].shape == (2, 24, 64)
        torch.testing.assert_close(tokens, hourglass.token_reconstruction(output[:, 1:], hourglass.clusters))
