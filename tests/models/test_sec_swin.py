"""SEC-Swin (paper Table 2): mmdet's and mmseg's Swin with every window attention replaced by SECA."""

import pytest
import torch
from einops import rearrange
from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS

import mmcluster  # noqa: F401  (hooks the registries)
from mmcluster.models.backbones.sec_swin import SwinSECAttention
from mmcluster.models.layers import RoPE2d, SECAttention

REGISTRIES = {'mmdet': MMDET_MODELS, 'mmseg': MMSEG_MODELS}
HEAD_1000 = 768 * 1000 + 1000  # Swin's classifier on the final LayerNorm (norm3)
# a 2-stage SEC-Swin that runs fast on the CPU
SMALL = dict(
    arch=None, embed_dims=32, depths=(1, 1), num_heads=(2, 4), strides=(4, 2), out_indices=(0, 1), num_clusters=(4, 0)
)


def build(registry='mmdet', **kwargs):
    return REGISTRIES[registry].build(dict(type='SECSwinTransformer', **kwargs))


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('registry', sorted(REGISTRIES))
@pytest.mark.parametrize(
    'arch, depths, ours, swin, paper',
    [('tiny', (2, 2, 6, 2), 28_379_848, 28_288_354, 29e6), ('small', (2, 2, 18, 2), 49_793_224, 49_606_258, 50e6)],
)
def test_parameters_as_table_2(registry, arch, depths, ours, swin, paper):
    """Counted as Table 2 counts classifiers: the network with one final norm and a 1000-class head. The
    upstream Swin counted the same way gives timm's swin_tiny / swin_small counts (the convention)."""
    sec = build(registry, arch=arch, out_indices=(3,))
    upstream = REGISTRIES[registry].build(dict(type='SwinTransformer', depths=depths, out_indices=(3,)))
    assert count(upstream) + HEAD_1000 == swin
    assert count(sec) + HEAD_1000 == ours
    assert abs(ours - paper) <= 1e6


def test_every_window_attention_is_replaced():
    model = build(arch='tiny')
    blocks = [block for stage in model.stages for block in stage.blocks]
    assert len(blocks) == 12 and all(type(block.attn) is SwinSECAttention for block in blocks)
    assert not any('relative_position' in key or 'w_msa' in key for key in model.state_dict())
    assert [stage.blocks[0].attn.num_clusters for stage in model.stages] == [32, 8, 2, 0]
    # the paper's counts give clusters of 98 tokens at 224x224 in stages 1-3, full attention over 49 in stage 4
    grids = [56 * 56, 28 * 28, 14 * 14, 7 * 7]
    assert [s.blocks[0].attn.num_clusters_for(n) for s, n in zip(model.stages, grids)] == [32, 8, 2, 1]
    linear = build(arch='tiny', tokens_per_cluster=98)
    assert [s.blocks[0].attn.num_clusters_for(n) for s, n in zip(linear.stages, (200 * 320, 100 * 160))] == [654, 164]


@pytest.mark.parametrize('registry', sorted(REGISTRIES))
@pytest.mark.parametrize('size', [(333, 517), (70, 70), (64, 64), (32, 256)])
def test_any_input_size_gives_swins_output_shapes(registry, size):
    """Any size works, and the outputs have the shapes of the upstream Swin's (its patch embedding and
    patch merging pad odd sizes; SECA needs no padding to windows)."""
    kwargs = dict(embed_dims=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))
    sec = build(registry, arch=None, **kwargs).eval()
    upstream = REGISTRIES[registry].build(dict(type='SwinTransformer', **kwargs))
    upstream.eval()  # OpenMMLab's Swin.train() returns None; SEC-Swin's returns the module
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = sec(x)
        expected = upstream(x)
    assert [o.shape for o in outs] == [e.shape for e in expected]
    assert all(torch.isfinite(o).all() and o.is_contiguous() for o in outs)


def test_token_layout_matches_the_map_layout():
    """SwinSECAttention on row-major (B, H*W, C) tokens equals SECA on the (B, C, H, W) map with the grid's
    RoPE tables (a transposed grid would rotate by the wrong positions)."""
    torch.manual_seed(0)
    attn = SwinSECAttention(32, 2, num_clusters=4).eval()
    plain = SECAttention(32, 2, num_clusters=4).eval()
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith('rope.')})
    height, width = 6, 10
    tokens = torch.randn(2, height * width, 32)
    with torch.no_grad():
        ours = attn(tokens, (height, width))
        grid = rearrange(tokens, 'b (y x) c -> b c y x', y=height)
        reference = rearrange(plain(grid, RoPE2d(16)(height, width)), 'b c y x -> b (y x) c')
        transposed = attn(rearrange(grid, 'b c y x -> b (x y) c'), (width, height))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not torch.allclose(rearrange(transposed, 'b (x y) c -> b (y x) c', x=width), ours, atol=1e-4)


@pytest.mark.parametrize('name', ['window_size', 'qkv_bias', 'qk_scale', 'attn_drop_rate'])
def test_window_attention_arguments_are_refused(name):
    with pytest.raises(TypeError, match=name):
        build(arch='tiny', **{name: 7 if name == 'window_size' else 0.0})


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match='arch must be one of'):
        build(arch='huge')
    with pytest.raises(ValueError, match='embed_dims'):
        build(arch='tiny', embed_dims=64)
    with pytest.raises(ValueError, match='not both'):
        build(arch='tiny', num_clusters=(4, 4, 2, 0), tokens_per_cluster=98)
    with pytest.raises(ValueError, match='num_clusters'):
        build(arch='tiny', num_clusters=(32, 8, 2))
    with pytest.raises(ValueError, match='divisible by 4'):
        build(**dict(SMALL, embed_dims=36, num_heads=(2, 2)))


def test_frozen_stages_as_mmdets_swin():
    """frozen_stages keeps the upstream meaning: 0 the patch embedding, k it and the first k stages; train()
    keeps them frozen and in eval mode."""
    model = build(arch=None, embed_dims=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), frozen_stages=1)
    model.train()
    frozen = {
        name.split('.')[0] + ('.' + name.split('.')[1] if name.startswith('stages') else '')
        for name, p in model.named_parameters()
        if not p.requires_grad
    }
    assert frozen == {'patch_embed', 'stages.0', 'norm0'}
    assert not model.stages[0].training and model.stages[1].training


def test_with_cp_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build(**SMALL, drop_path_rate=0.0)
    checkpointed = build(**SMALL, drop_path_rate=0.0, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 96)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-5)


def test_init_from_scratch_and_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build(**SMALL)
    model.init_weights()
    conv = model.stages[0].blocks[0].attn.qkv
    assert 0.015 < conv.weight.std() < 0.025 and not conv.bias.any()
    path = tmp_path / 'sec_swin.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}, path)

    loaded = build(**SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    loaded.init_weights()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), loaded.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    missing = build(**SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nothing.pth')))
    with pytest.raises(FileNotFoundError, match='nothing.pth'):
        missing.init_weights()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_gives_finite_outputs(dtype):
    torch.manual_seed(0)
    model = build(**SMALL).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        outs = model(torch.randn(1, 3, 72, 88))
    assert all(torch.isfinite(o.float()).all() for o in outs)


def test_in_mmdets_swin_config(tmp_path):
    """What a user writes: mmdet's own Mask R-CNN Swin-T config with the backbone swapped (the neck takes
    the same channels)."""
    from mmengine.config import Config

    config = tmp_path / 'mask-rcnn_sec-swin-t_fpn_1x_coco.py'
    config.write_text(
        "_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']\n"
        "custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='SECSwinTransformer', arch='tiny', drop_path_rate=0.2))\n"
    )
    cfg = Config.fromfile(str(config))
    model = MMDET_MODELS.build(cfg.model).eval()
    assert type(model.backbone).__name__ == 'SECSwinTransformer'
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 136))
    assert [f.shape[1] for f in feats] == [256] * 5


def test_macs_differ_from_swin_only_by_seca():
    """Counted by get_flops' counter at 224²: SEC-Swin-T costs Swin-T's MACs plus, per block, the attention
    products over clusters of 98 tokens instead of windows of 49 (stage 4: 49 tokens either way), the 5x5
    LCE, and the similarity to the mean key (stages 1-3); nothing else changed. Measured: 4.660 G against
    Swin-T's 4.490 G (the paper's Table 2: 4.9 and 4.5)."""
    from mmcluster.utils.flops import module_complexity

    sec = module_complexity(build(arch='tiny'), 224, 224)['macs']
    swin = module_complexity(MMDET_MODELS.build(dict(type='SwinTransformer')), 224, 224)['macs']
    extra = 0
    for tokens, dim, depth, cluster in zip((3136, 784, 196, 49), (96, 192, 384, 768), (2, 2, 6, 2), (98, 98, 98, 49)):
        scores = tokens * dim if cluster < tokens else 0
        extra += depth * (2 * tokens * (cluster - 49) * dim + tokens * dim * 25 + scores)
    assert sec - swin == extra
    assert (round(sec / 1e9, 2), round(swin / 1e9, 2)) == (4.66, 4.49)
