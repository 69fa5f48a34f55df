"""PaCa-ViT backbone: fidelity to the official model (iVMCL/PaCaViT models/paca_vit.py), downstream interface,
robustness."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from mmcluster.models.backbones.paca_vit import PaCaViT, PaCaViTClassifier, PatchToClusterAttention
from mmcluster.utils.flops import count_macs

# the official models/paca_vit.py built on CPU: parameters with the 1000-class head, MACs at 224x224, state-dict entries
OFFICIAL = {
    'paca_tiny': (12_200_680, 3.219, 239),
    'paca_small': (22_037_704, 5.501, 417),
    'paca_base': (46_911_304, 9.537, 577),
    'paca_small_mlp': (22_637_268, 5.864, 414),
    'paca_tiny_teacher': (12_483_672, 3.424, 395),
    'paca_small_teacher': (21_075_064, 5.482, 555),
    'paca_base_teacher': (47_659_192, 9.771, 763),
}
SMALL_ABLATIONS = {  # PaCa-Small conv clustering: (clusters, assignment) -> (params, MACs G, entries)
    ((2, 2, 2, 0), 'stage'): (21_978_120, 4.640, None),
    ((49, 49, 49, 0), 'stage'): (22_006_696, 5.053, None),
    ((49, 64, 81, 100), 'stage'): (22_227_560, 5.273, None),
    ((100, 81, 64, 49), 'stage'): (22_210_696, 5.336, None),
    ((100, 100, 100, 100), 'stage'): (22_245_448, 5.568, 428),
    ((100, 100, 100, 100), 'block'): (24_191_944, 6.103, 503),
}


def record_assignments(attn: PatchToClusterAttention, seen: list) -> None:
    """Append the assignment that ``attn`` uses (computed or passed in) to ``seen`` on every call."""
    keys_values = attn.keys_values

    def recording(*args):
        keys, values, assignment = keys_values(*args)
        seen.append(assignment)
        return keys, values, assignment

    attn.keys_values = recording


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def test_timm_registry_has_every_variant():
    assert set(timm.list_models('paca_*')) == set(OFFICIAL)
    for name in OFFICIAL:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.crop_pct == 0.9 and cfg.interpolation == 'bicubic'
        assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN and cfg.std == timm.data.IMAGENET_DEFAULT_STD
        has_release = name != 'paca_tiny_teacher'  # the official release has no tiny teacher checkpoint
        assert bool(cfg.url) == has_release
        if has_release:
            assert cfg.url.startswith('https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_')


@pytest.mark.parametrize('name', list(OFFICIAL))
def test_named_variant_matches_official(name):
    params, macs, entries = OFFICIAL[name]
    model = timm.create_model(name).eval()
    assert num_params(model) == params
    assert len(model.state_dict()) == entries
    measured = count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9
    assert measured == pytest.approx(macs, rel=0.02)


@pytest.mark.parametrize('clusters,assignment', list(SMALL_ABLATIONS))
def test_small_ablation_matches_official(clusters, assignment):
    params, macs, entries = SMALL_ABLATIONS[(clusters, assignment)]
    model = PaCaViTClassifier('small', num_clusters=clusters, assignment=assignment).eval()
    assert num_params(model) == params
    if entries is not None:
        assert len(model.state_dict()) == entries
    assert count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9 == pytest.approx(macs, rel=0.02)


def test_drop_path_rates_follow_the_official_schedule():
    assert timm.create_model('paca_base').stages[3].blocks[2].drop_path.drop_prob == pytest.approx(0.5)
    model = timm.create_model('paca_tiny')
    rates = [
        0.0 if isinstance(b.drop_path, torch.nn.Identity) else b.drop_path.drop_prob
        for s in model.stages
        for b in s.blocks
    ]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 10).tolist())


@pytest.mark.parametrize('height,width', [(224, 224), (333, 517), (64, 64), (97, 31)])
def test_backbone_returns_four_maps_for_any_size(height, width):
    model = PaCaViT('tiny').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, height, width))
    assert len(outs) == 4
    h, w = height, width
    for i, (out, channels) in enumerate(zip(outs, (96, 192, 320, 384))):
        steps = 2 if i == 0 else 1
        for _ in range(steps):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert out.shape == (1, channels, h, w)
        assert torch.isfinite(out).all()


def test_outputs_are_contiguous_nchw_for_roi_align():
    """mmcv's compiled RoIAlign ignores strides: channels-last features (which convs produce from a
    channels-last-strided input) give wrong RoI features. The backbone must hand out NCHW-contiguous maps."""
    import torchvision
    from mmcv.ops import RoIAlign

    outs = PaCaViT('tiny_teacher').eval()(torch.randn(2, 3, 96, 64))
    assert all(o.is_contiguous() for o in outs)
    lateral = torch.nn.Conv2d(96, 16, 1)
    p2 = lateral(outs[0])
    rois = torch.tensor([[0.0, 4.0, 8.0, 40.0, 60.0], [1.0, 10.0, 2.0, 60.0, 30.0]])
    ours = RoIAlign((7, 7), 0.25, 0, aligned=True)(p2, rois)
    reference = torchvision.ops.roi_align(p2.contiguous(), rois, (7, 7), 0.25, 0, aligned=True)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_teacher_backbone_any_size():
    model = PaCaViT('tiny_teacher').eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 75, 129))
    assert [tuple(o.shape[1:]) for o in outs] == [(96, 19, 33), (192, 10, 17), (320, 5, 9), (384, 3, 5)]


def test_out_indices_select_stages():
    model = PaCaViT('tiny', out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [192, 384]


def test_frozen_stages_and_norm_eval():
    model = PaCaViT('tiny_teacher', frozen_stages=2, norm_eval=True)
    assert model.train() is model
    for module in (
        model.patch_embed,
        model.stages[0],
        model.stages[1],
        model.teacher.stages[0],
        model.teacher.stages[1],
        model.teacher.downsamples[0],
    ):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert model.stages[2].training and all(p.requires_grad for p in model.stages[2].parameters())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not bn.training for bn in bns)


def test_stage_and_block_wise_clustering_modules():
    stage_wise = PaCaViT('small')
    assert [sum(b.attn.clustering is not None for b in s.blocks) for s in stage_wise.stages] == [1, 1, 1, 0]
    block_wise = PaCaViT('small', num_clusters=(100,) * 4, assignment='block')
    assert [sum(b.attn.clustering is not None for b in s.blocks) for s in block_wise.stages] == [3, 3, 10, 3]
    teacher = PaCaViT('small_teacher')
    assert all(b.attn.clustering is None for s in teacher.stages for b in s.blocks)
    assert all(b.attn.cluster_norm is not None for s in teacher.stages for b in s.blocks)


def test_mlp_clustering_shapes():
    model = PaCaViT('small', clustering='mlp')
    clustering = model.stages[0].blocks[0].attn.clustering
    assert clustering.fc.weight.shape == (384, 96) and clustering.to_clusters.weight.shape == (100, 384)


def test_attention_matches_the_paper_equations():
    """Eqns. 1-2 written out without the fused kernel: Z = LN(softmax_N(logits) X), multi-head attention."""
    torch.manual_seed(0)
    from mmcluster.models.backbones.paca_vit import ConvClustering

    dim, heads, clusters, hw = 32, 4, 5, (6, 7)
    attn = PatchToClusterAttention(dim, heads, clusters, ConvClustering(dim, clusters)).eval()
    x = torch.randn(2, hw[0] * hw[1], dim)
    out, assignment = attn(x, hw)

    logits = attn.clustering(x, hw)
    c = torch.softmax(logits, dim=-1)  # (B, M, N): over tokens
    assert torch.allclose(assignment, c, atol=1e-6)
    assert torch.allclose(c.sum(-1), torch.ones(2, clusters))
    z = F.layer_norm(c @ x, (dim,), attn.cluster_norm.weight, attn.cluster_norm.bias, eps=1e-6)
    q, k, v = attn.q(x), attn.k(z), attn.v(z)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    expected = attn.proj((weights @ split(v)).transpose(1, 2).reshape(2, -1, dim))
    assert torch.allclose(out, expected, atol=1e-5)

    full = PatchToClusterAttention(dim, heads, 0).eval()
    out, assignment = full(x, hw)
    assert assignment is None
    weights = torch.softmax(split(full.q(x)) @ split(full.k(x)).transpose(-1, -2) / math.sqrt(dim // heads), -1)
    expected = full.proj((weights @ split(full.v(x))).transpose(1, 2).reshape(2, -1, dim))
    assert torch.allclose(out, expected, atol=1e-5)


def test_stage_wise_blocks_share_one_assignment():
    model = PaCaViT('tiny').eval()
    seen = []
    for block in model.stages[0].blocks:
        record_assignments(block.attn, seen)
    model(torch.randn(1, 3, 64, 64))
    assert len(seen) == 2 and seen[0] is not None and seen[0] is seen[1]


def test_cluster_maps_are_readable_per_layer():
    model = PaCaViT('tiny').eval()
    logits = model.cluster_maps(torch.randn(2, 3, 96, 64))
    assert list(logits) == [f'stages.{i}.blocks.0.attn.clustering' for i in range(3)]
    assert [tuple(v.shape) for v in logits.values()] == [(2, 100, 24, 16), (2, 100, 12, 8), (2, 100, 6, 4)]
    teacher = PaCaViT('tiny_teacher').eval().cluster_maps(torch.randn(1, 3, 64, 64))
    assert list(teacher) == [f'teacher.to_clusters.{i}' for i in range(4)]


def test_hooks_and_cluster_maps_see_the_logits_not_the_weights(monkeypatch):
    """In fp32 CPU inference the assignment is written over the clustering's logits (SoftAssignment(overwrite_logits=
    True)), but not while a forward hook may keep them: cluster_maps, a hook on the clustering layer, a pre-hook on the
    assignment module and a hook on every module all keep the logits the layer made. Without hooks the weights still
    overwrite them, and the outputs are the same either way."""
    from mmcluster.models.layers import clustering as clustering_module

    model = PaCaViT('tiny').eval()
    x = torch.randn(1, 3, 64, 96)
    attn = model.stages[0].blocks[0].attn
    out_of_place = []
    soft_assignment = clustering_module.soft_assignment
    monkeypatch.setattr(clustering_module, 'soft_assignment', lambda t: out_of_place.append(1) or soft_assignment(t))

    def run_with(register, watched_blocks=1):
        kept, copies = [], []
        handles = [register(kept), attn.clustering.register_forward_hook(lambda m, i, out: copies.append(out.clone()))]
        out_of_place.clear()
        with torch.no_grad():
            outs = model(x)
        for handle in handles:
            handle.remove()
        torch.testing.assert_close(kept[0], copies[0], rtol=0, atol=0)  # what the hook kept is still the logits
        assert len(out_of_place) == watched_blocks  # the watched blocks' weights went into tensors of their own
        return outs, copies[0]

    with torch.no_grad():
        plain = model(x)
    assert out_of_place == []  # no hooks: every clustering block's weights overwrote its logits
    hooked, logits = run_with(lambda kept: attn.clustering.register_forward_hook(lambda m, i, out: kept.append(out)))
    assert not torch.allclose(logits.sum(-1), torch.ones(()))  # logits, not weights
    run_with(lambda kept: attn.assign.register_forward_pre_hook(lambda m, args: kept.append(args[0])))
    register_global = torch.nn.modules.module.register_module_forward_hook
    # a hook on every module watches the three clustering blocks
    run_with(lambda kept: register_global(lambda m, i, out: kept.append(out) if m is attn.clustering else None), 3)
    for a, b in zip(plain, hooked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    maps = model.cluster_maps(x)
    torch.testing.assert_close(maps['stages.0.blocks.0.attn.clustering'].flatten(2), logits, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_keeps_assignment_in_fp32_and_finite(dtype):
    model = PaCaViT('tiny_teacher').eval()
    assignments = []
    record_assignments(model.stages[1].blocks[0].attn, assignments)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        outs = model(torch.randn(1, 3, 128, 96) * 3)
    assert outs[0].dtype == dtype
    assert all(torch.isfinite(o.float()).all() for o in outs)
    assert assignments[0].dtype == torch.float32
    assert torch.allclose(assignments[0].sum(-1), torch.ones(1, 100), atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_training_step_of_a_segmentor_is_finite(dtype):
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    init_default_scope('mmseg')
    model = MODELS.build(
        dict(
            type='EncoderDecoder',
            backbone=dict(type='PaCaViT', arch='tiny', num_clusters=(200, 200, 200, 0)),
            decode_head=dict(
                type='PaCaHead',
                in_channels=[96, 192, 320, 384],
                in_index=[0, 1, 2, 3],
                channels=64,
                num_classes=5,
                norm_cfg=dict(type='BN'),
            ),
        )
    ).train()
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(96, 96), pad_shape=(96, 96)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 96, 96)))
        samples.append(sample)
    with torch.autocast('cpu', dtype=dtype):
        losses = model.loss(torch.randn(2, 3, 96, 96) * 3, samples)
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_classifier_forward_and_reset():
    model = timm.create_model('paca_tiny', num_classes=10).eval()
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True).shape == (1, 384)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 384)


@pytest.mark.parametrize(
    'kwargs,name',
    [
        (dict(arch='huge'), 'arch'),
        (dict(arch=dict(embed_dims=(96, 192, 320, 384), depths=(2, 2, 4, 2), num_heads=(2, 4, 7, 16))), 'num_heads'),
        (dict(arch=dict(embed_dims=(96, 192, 320), depths=(2, 2, 4), num_heads=(2, 4, 8))), 'arch.embed_dims'),
        (dict(arch=dict(embed_dims=(96, 192, 320, 384), depths=(2, 2, 4), num_heads=(2, 4, 8, 16))), 'arch.depths'),
        (dict(arch=dict(embed_dims=(96, 192, 320, 384), depths=(2, 2, 4, 2))), 'num_heads'),
        (dict(num_clusters=(100, 100, 100)), 'num_clusters'),
        (dict(num_clusters=(100, -1, 100, 0)), 'num_clusters'),
        (dict(num_clusters=(100, 1.5, 100, 0)), 'num_clusters'),
        (dict(clustering='kmeans'), 'clustering'),
        (dict(clustering='teacher'), 'teacher_depths'),
        (dict(arch='tiny_teacher', clustering='conv'), 'teacher_depths'),
        (dict(assignment='layer'), 'assignment'),
        (dict(out_indices=(0, 4)), 'out_indices'),
        (dict(frozen_stages=5), 'frozen_stages'),
        (dict(frozen_stages=-2), 'frozen_stages'),
        (dict(out_indices=3), 'out_indices'),
        (dict(out_indices=(0, 0)), 'out_indices'),
        (dict(out_indices=()), 'out_indices'),
        (dict(drop_path_rate=1.0), 'drop_path_rate'),
        (dict(init_cfg=dict(type='Kaiming')), None),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError) as error:
        PaCaViT(**kwargs).init_weights()
    if name is not None:
        assert name in str(error.value)


def test_building_twice_does_not_mutate_the_variant_table():
    """The official model functions popped keys from shared dicts: a second teacher build raised KeyError."""
    import copy

    from mmcluster.models.backbones.paca_vit import PACA_ARCHS

    before = copy.deepcopy(PACA_ARCHS)
    for _ in range(2):
        timm.create_model('paca_tiny_teacher', drop_path_rate=0.2)
        PaCaViT('tiny_teacher')
    assert PACA_ARCHS == before


def test_timm_kwargs_are_honoured():
    """The official timm functions dropped every kwarg but num_classes (--drop-path was ignored)."""
    model = timm.create_model('paca_tiny', drop_path_rate=0.3, num_classes=7)
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert model.head.out_features == 7
