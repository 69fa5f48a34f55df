"""The mmdet / mmseg backbone contract (mmcluster.models.backbones.base.BackboneContract), for every
backbone that mmcluster registers: frozen_stages as mmdet's Swin means it, with_cp, train(), norm_eval,
mmseg's deprecated `pretrained`, argument checks, fp32 cluster pooling under autocast."""

import numpy as np
import pytest
import torch

from mmcluster.models.backbones import MM_BACKBONES
from mmcluster.models.layers import pool_clusters, soft_assignment

SMALL = {'PaCaViT': dict(arch='tiny_teacher'), 'SecViT': dict(arch='tiny')}  # small variants, with every part
# Relative error allowed under autocast. SecViT's hard sort into clusters is discontinuous: a token whose score
# moves past a neighbour's changes cluster, so at random initialisation a 1e-4 relative change of the input
# already moves its fp32 output by about 8%. For it only finiteness is checked here, and tests/models/
# test_secvit.py checks that the scores and the sort run in fp32.
AUTOCAST_RTOL = {'PaCaViT': 0.05, 'SecViT': None}


def build(cls, **kwargs):
    return cls(**dict(SMALL[cls.__name__], **kwargs))


def test_every_backbone_has_a_small_variant_here():
    assert {cls.__name__ for cls in MM_BACKBONES} == set(SMALL) == set(AUTOCAST_RTOL)


def _frozen_pattern(stem, stages):
    def frozen(module):
        return all(not p.requires_grad for p in module.parameters()) and not module.training

    return [frozen(stem)] + [frozen(stage) for stage in stages]


@pytest.mark.parametrize('cls', MM_BACKBONES)
@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages_mean_what_mmdet_swin_means(cls, frozen_stages):
    """-1 freezes nothing, 0 the stem only, k the stem and the first k stages: the same pattern as mmdet's
    SwinTransformer built with the same value."""
    from mmdet.models.backbones import SwinTransformer

    swin = SwinTransformer(
        embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2, frozen_stages=frozen_stages
    )
    swin.train()  # mmdet's Swin.train returns None
    ours = build(cls, frozen_stages=frozen_stages).train()
    expected = _frozen_pattern(swin.patch_embed, swin.stages)
    assert expected == [frozen_stages >= 0] + [i < frozen_stages for i in range(4)]
    assert _frozen_pattern(ours.patch_embed, ours.stages) == expected
    for i in range(4):  # the parts of a stage outside `stages[i]` (e.g. PaCa's teacher) follow it
        assert all(_frozen_pattern(m, [])[0] == (i < frozen_stages) for m in ours.stage_modules(i))


@pytest.mark.parametrize('cls', MM_BACKBONES)
def test_train_returns_self_and_reapplies_freezing_and_norm_eval(cls):
    model = build(cls, frozen_stages=1, norm_eval=True)
    assert model.train() is model and model.train(False) is model
    model.stages[0].train()  # e.g. a runner's model.train() on a parent module
    model.train()
    assert not model.stages[0].training and model.stages[1].training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(not bn.training for bn in bns)
    model.init_weights()
    assert all(not p.requires_grad for p in model.stages[0].parameters())


def _saved_bytes(model, x):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return outs, total[0]


@pytest.mark.parametrize('cls', MM_BACKBONES)
def test_with_cp_gives_the_same_outputs_and_gradients_with_less_saved_activation(cls):
    torch.manual_seed(0)
    plain = build(cls, drop_path_rate=0.2).train()
    checkpointed = build(cls, drop_path_rate=0.2, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        outs, saved = _saved_bytes(model, x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, saved, {n: p.grad for n, p in model.named_parameters()}))
    (outs_a, saved_a, grads_a), (outs_b, saved_b, grads_b) = results
    assert all(torch.equal(a, b) for a, b in zip(outs_a, outs_b))
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-6) for n in grads_a)
    assert saved_b < 0.6 * saved_a, (saved_a, saved_b)


@pytest.mark.parametrize('cls', MM_BACKBONES)
def test_outputs_are_a_list_of_contiguous_nchw_maps(cls):
    outs = build(cls, out_indices=(1, 3)).eval()(torch.randn(1, 3, 65, 47))
    assert isinstance(outs, list) and len(outs) == 2
    assert all(o.is_contiguous() and o.ndim == 4 for o in outs)


@pytest.mark.parametrize('cls', MM_BACKBONES)
def test_numpy_integers_are_accepted_and_bad_arguments_named(cls):
    model = build(cls, out_indices=np.arange(4), frozen_stages=np.int64(1))
    assert model.out_indices == (0, 1, 2, 3) and type(model.out_indices[0]) is int
    for kwargs, name in [
        (dict(out_indices=3), 'out_indices'),
        (dict(out_indices=(0, 1.0)), 'out_indices'),
        (dict(frozen_stages=1.5), 'frozen_stages'),
        (dict(with_cp=True, frozen_stages=9), 'frozen_stages'),
        (dict(init_cfg=dict(type='Pretrained')), 'init_cfg'),
        (dict(pretrained=3), 'pretrained'),
    ]:
        with pytest.raises(ValueError, match=name):
            build(cls, **kwargs)


@pytest.mark.parametrize('cls', MM_BACKBONES)
def test_mmseg_deprecated_pretrained_argument(cls, tmp_path):
    model = build(cls, pretrained=str(tmp_path / 'weights.pth'))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(tmp_path / 'weights.pth'))
    with pytest.warns(UserWarning, match='open-mmlab://resnet50_v1c'):
        model = build(
            cls, pretrained='open-mmlab://resnet50_v1c', init_cfg=dict(type='Pretrained', checkpoint='ours.pth')
        )
    assert model.init_cfg['checkpoint'] == 'ours.pth'


def test_cluster_pooling_runs_in_fp32_under_autocast():
    """C^T X over the 65,536 tokens of stage 0 at 1024x1024: cast to fp16 (as autocast's matmul would), most
    assignment weights (~1/N) are subnormal. pool_clusters multiplies in fp32."""
    torch.manual_seed(0)
    tokens = torch.randn(1, 256 * 256, 32).half()
    assignment = soft_assignment(torch.randn(1, 100, 256 * 256) * 2)
    assert (assignment.half() < 2**-14).float().mean() > 0.9  # below fp16's smallest normal number
    reference = assignment @ tokens.float()
    with torch.autocast('cpu', dtype=torch.float16):
        naive = torch.matmul(assignment, tokens)
        ours = pool_clusters(assignment, tokens)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(naive.float(), reference, rtol=1e-5, atol=1e-7)
    assert pool_clusters(assignment, tokens).dtype == torch.float16  # a .half() model outside autocast


@pytest.mark.parametrize('cls', MM_BACKBONES)
@pytest.mark.parametrize('dtype,size', [(torch.bfloat16, 1024), (torch.float16, 256)])  # CPU fp16 is slow
def test_autocast_is_finite_and_close_to_fp32(cls, dtype, size):
    torch.manual_seed(0)
    model = build(cls).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=dtype):
            outs = model(x)
    rtol = AUTOCAST_RTOL[cls.__name__]
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        if rtol is not None:
            assert ((out.float() - ref).norm() / ref.norm()).item() < rtol
