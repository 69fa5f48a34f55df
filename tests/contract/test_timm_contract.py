"""Every timm model that mmcluster registers honours timm's model interface, checked as timm's own model
tests check it: forward and backward, features_only, forward_intermediates, pretrained config, classifier."""

import math

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg, group_parameters, model_entrypoint

import mmcluster  # noqa: F401  (registers the models)

MODELS = sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('mmcluster.'))
CFG_KEYS = (
    'url',
    'num_classes',
    'input_size',
    'pool_size',
    'crop_pct',
    'interpolation',
    'mean',
    'std',
    'first_conv',
    'classifier',
)


def test_every_family_registers_models():
    assert {n.split('_')[0] for n in MODELS} >= {'paca'}


def _reductions(height, width, reduction):
    size = (height, width)
    for _ in range(int(math.log2(reduction))):
        size = tuple(math.ceil(s / 2) for s in size)
    return size


@pytest.mark.parametrize('name', MODELS)
def test_forward_backward_default_and_non_square(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    cfg = model.pretrained_cfg
    for key in CFG_KEYS:
        assert key in cfg, key
    state = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state
    for size in (tuple(cfg['input_size'][1:]), (96, 160)):
        out = model(torch.randn(1, 3, *size))
        assert out.shape == (1, 10) and torch.isfinite(out).all()
        model.zero_grad()
        out.mean().backward()
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert trainable and not without_grad, without_grad


@pytest.mark.parametrize('name', MODELS)
def test_features_only_maps_at_strides_4_to_32(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 70, 99))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [tuple(f.shape[2:]) for f in feats] == [_reductions(70, 99, r) for r in (4, 8, 16, 32)]
    two = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    assert two.feature_info.reduction() == [8, 32]
    assert [f.shape[1] for f in two(torch.randn(1, 3, 64, 64))] == two.feature_info.channels()


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates_equal_forward_features(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        final, intermediates = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(intermediates) == 4
    assert torch.equal(final, features) and torch.equal(intermediates[-1], features)
    assert len(only) == 2 and torch.equal(only[0], intermediates[2]) and torch.equal(only[1], intermediates[3])
    kept = model.prune_intermediate_layers(indices=(0, 1))
    assert list(kept) == [0, 1] and len(model.stages) == 2
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(pruned, intermediates[:2]))


@pytest.mark.parametrize('name', MODELS)
def test_classifier_interface(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.num_features) == (2, model.head_hidden_size)
        model.reset_classifier(0)
        assert torch.equal(model(x), pre)
        model.reset_classifier(5, 'avg')
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    assert isinstance(model.no_weight_decay(), set)
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = {n for g in groups.values() for n in g}
        assert grouped == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match='num_classes'):
        timm.create_model(name, num_classes=-1)
    assert get_pretrained_cfg(name) is not None


@pytest.mark.parametrize('name', [n for n in MODELS if 'tiny' in n][:1] or MODELS[:1])
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4, drop_path_rate=0.2)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        out.square().sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.allclose(grads[0][1][n], grads[1][1][n], atol=1e-6) for n in grads[0][1])
