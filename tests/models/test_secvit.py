"""SecViT: fidelity to the official model (spec §2) and to the paper's SECA listing (Appendix E), padding for
any input size, tokens_per_cluster, autocast, the mm backbone, and the converter for official checkpoints.

The official layout, its angle buffers and an official-style forward pass are written out here from the
spec (§2.2-§2.10) and the paper's listing, independently of mmcluster's modules."""

import math
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F

from mmcluster.models.backbones.secvit import SECAttention, SecViT, SecViTClassifier
from mmcluster.models.conversion import detect_family, get_converter
from mmcluster.models.layers import RoPE2d, SemanticScores, cluster_ids, equitable_cluster_attention
from mmcluster.utils.flops import count_macs

# spec §2.1 (architecture), §1 (parameters with the 1000-class head), §2.10 (state-dict entries),
# §5.1 (backbone-only parameters, without proj / norm / head)
OFFICIAL = {
    'secvit_tiny': dict(
        dims=(64, 128, 256, 512),
        depths=(2, 2, 9, 2),
        heads=(2, 4, 8, 16),
        layer_scale=(),
        params=14_981_800,
        entries=332,
        backbone=13_429_440,
        drop_path=0.1,
    ),
    'secvit_small': dict(
        dims=(64, 128, 256, 512),
        depths=(3, 4, 18, 4),
        heads=(2, 4, 8, 16),
        layer_scale=(),
        params=26_776_104,
        entries=584,
        backbone=25_223_744,
        drop_path=0.15,
    ),
    'secvit_base': dict(
        dims=(80, 160, 320, 512),
        depths=(4, 8, 26, 8),
        heads=(5, 5, 10, 16),
        layer_scale=(2, 3),
        params=54_682_776,
        entries=958,
        backbone=53_130_416,
        drop_path=0.4,
    ),
    'secvit_large': dict(
        dims=(112, 224, 448, 640),
        depths=(4, 8, 26, 8),
        heads=(7, 7, 14, 20),
        layer_scale=(2, 3),
        params=96_495_096,
        entries=958,
        backbone=94_811_664,
        drop_path=0.5,
    ),
}
# spec §3.3: fvcore GMACs at 224x224 (total, and its LayerNorm + BatchNorm share, which count_macs does not count)
FVCORE_GMACS = {'secvit_tiny': (2.72, 0.014), 'secvit_small': (4.76, 0.023)}  # B, L: see docs/secvit.md
HEAD_ENTRIES = 9  # proj (2), norm (5), head (2)


def num_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# The official layout (spec §2.10), written from the spec


def _bn(prefix, c):
    return {
        f'{prefix}.weight': (c,),
        f'{prefix}.bias': (c,),
        f'{prefix}.running_mean': (c,),
        f'{prefix}.running_var': (c,),
        f'{prefix}.num_batches_tracked': (),
    }


def official_shapes(name, num_classes=1000):
    cfg = OFFICIAL[name]
    dims, depths, heads = cfg['dims'], cfg['depths'], cfg['heads']
    s = OrderedDict()
    c0, half = dims[0], dims[0] // 2
    for conv, (cin, cout) in zip((0, 3, 6, 9), [(3, half), (half, half), (half, half), (half, c0)]):
        s[f'patch_embed.proj.{conv}.weight'] = (cout, cin, 3, 3)
        s[f'patch_embed.proj.{conv}.bias'] = (cout,)
        s.update(_bn(f'patch_embed.proj.{conv + 1}', cout))
    for i, (c, depth, nh) in enumerate(zip(dims, depths, heads)):
        s[f'layers.{i}.RoPE.angle'] = (c // nh // 2,)
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}'
            for key, shape in [
                ('pos', (c, 1, 3, 3)),
                ('attn.qkv', (3 * c, c, 1, 1)),
                ('attn.lepe', (c, 1, 5, 5)),
                ('attn.out_proj', (c, c, 1, 1)),
                ('ffn.fc1', (3 * c, c, 1, 1)),
                ('ffn.dwconv', (3 * c, 1, 3, 3)),
                ('ffn.fc2', (c, 3 * c, 1, 1)),
            ]:
                s[f'{p}.{key}.weight'] = shape
                s[f'{p}.{key}.bias'] = (shape[0],)
            for norm in ('norm1', 'norm2'):
                s[f'{p}.{norm}.norm.weight'] = s[f'{p}.{norm}.norm.bias'] = (c,)
            if i in cfg['layer_scale']:
                s[f'{p}.gamma_1'] = s[f'{p}.gamma_2'] = (1, c, 1, 1)
        if i < 3:
            s[f'layers.{i}.downsample.reduction.weight'] = (dims[i + 1], c, 3, 3)
            s[f'layers.{i}.downsample.reduction.bias'] = (dims[i + 1],)
            s.update(_bn(f'layers.{i}.downsample.norm', dims[i + 1]))
    s['proj.weight'], s['proj.bias'] = (1024, dims[-1], 1, 1), (1024,)
    s.update(_bn('norm', 1024))
    s['head.weight'], s['head.bias'] = (num_classes, 1024, 1, 1), (num_classes,)
    return s


def official_angle(head_dim):
    """§2.5.1: d/4 frequencies 10000^-t, t evenly spaced on [0, 1] inclusive, each twice in a row."""
    t = torch.linspace(0, 1, head_dim // 4)
    frequencies = 10000.0**-t
    return torch.stack([frequencies, frequencies], dim=1).flatten()


def random_official_state_dict(name, seed=0, num_classes=1000):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in official_shapes(name, num_classes).items():
        if key.endswith('RoPE.angle'):
            sd[key] = official_angle(2 * shape[0])
        elif key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(7)
        elif key.endswith('running_var'):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith('gamma_1') or key.endswith('gamma_2'):
            sd[key] = 0.3 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:  # conv weights, scaled to keep activations of order 1
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
            if key.endswith(('out_proj.weight', 'fc2.weight')):  # residual branches: keep the sum moderate
                sd[key] *= 0.3
        elif 'norm' in key and key.endswith('weight'):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # biases, BN running means
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


# ---------------------------------------------------------------------------------------------------
# The paper's SECA listing (Appendix E) with the official RoPE and LCE (spec §2.5), loop-based


def rope_complex(x, angle, height, width):
    """2-D RoPE (§2.5.1) as a complex rotation of each channel pair: rows rotate the first half of the
    head, columns the second half."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    phase = torch.cat([rows.reshape(-1, 1) * angle, cols.reshape(-1, 1) * angle], dim=-1)  # (N, d)
    turn = torch.polar(torch.ones_like(phase[:, 0::2]), phase[:, 0::2])
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * turn).flatten(-2)


def balanced_sizes(num_tokens, clusters):
    """Cluster sizes of mmcluster's padded layout: s = ceil(N / c); the last c * s - N clusters hold s - 1."""
    size = -(-num_tokens // clusters)
    short = clusters * size - num_tokens
    return [size] * (clusters - short) + [size - 1] * short


def listing_attention(q, k, v, clusters):
    """Lines 56-78 of the listing for (b, n, N, d) q, k (already scaled), v; loops over batch, head, cluster."""
    out = torch.empty_like(v)
    for b in range(q.shape[0]):
        for n in range(q.shape[1]):
            if clusters > 1:
                centre = F.normalize(k[b, n].mean(0, keepdim=True), dim=-1)
                sim = (centre @ F.normalize(k[b, n], dim=-1).T)[0]
                idx = torch.argsort(sim)
                start = 0
                for size in balanced_sizes(q.shape[2], clusters):
                    sel = idx[start : start + size]
                    start += size
                    attn = torch.softmax(q[b, n, sel] @ k[b, n, sel].T, dim=-1)
                    out[b, n, sel] = attn @ v[b, n, sel]
            else:
                out[b, n] = torch.softmax(q[b, n] @ k[b, n].T, dim=-1) @ v[b, n]
    return out


def listing_seca(x, sd, prefix, num_heads, clusters, angle):
    batch, channels, height, width = x.shape
    d = channels // num_heads
    qkv = F.conv2d(x, sd[f'{prefix}qkv.weight'], sd[f'{prefix}qkv.bias'])
    lce = F.conv2d(
        qkv[:, 2 * channels :], sd[f'{prefix}lepe.weight'], sd[f'{prefix}lepe.bias'], padding=2, groups=channels
    )
    # 'b (m n d) h w -> m b n (h w) d'
    q, k, v = qkv.reshape(batch, 3, num_heads, d, height * width).permute(1, 0, 2, 4, 3)
    q = rope_complex(q, angle, height, width)
    k = rope_complex(k, angle, height, width) * d**-0.5
    out = listing_attention(q, k, v, clusters)
    out = out.permute(0, 1, 3, 2).reshape(batch, channels, height, width)
    return F.conv2d(out + lce, sd[f'{prefix}out_proj.weight'], sd[f'{prefix}out_proj.bias'])


def channel_ln(x, weight, bias):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, 1e-6).permute(0, 3, 1, 2)


def bn(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f'{prefix}.running_mean'],
        sd[f'{prefix}.running_var'],
        sd[f'{prefix}.weight'],
        sd[f'{prefix}.bias'],
        training=False,
        eps=1e-5,
    )


def official_forward(sd, name, x, clusters=(32, 8, 2, -1)):
    """The official classifier's eval forward (spec §2.2-§2.8) on an official-layout state dict."""
    cfg = OFFICIAL[name]
    for conv in (0, 3, 6, 9):
        x = F.conv2d(
            x,
            sd[f'patch_embed.proj.{conv}.weight'],
            sd[f'patch_embed.proj.{conv}.bias'],
            stride=2 if conv in (0, 9) else 1,
            padding=1,
        )
        x = bn(x, sd, f'patch_embed.proj.{conv + 1}')
        x = F.gelu(x) if conv != 9 else x
    for i, (c, depth, heads) in enumerate(zip(cfg['dims'], cfg['depths'], cfg['heads'])):
        angle = sd[f'layers.{i}.RoPE.angle']
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            x = x + F.conv2d(x, sd[p + 'pos.weight'], sd[p + 'pos.bias'], padding=1, groups=c)
            y = listing_seca(
                channel_ln(x, sd[p + 'norm1.norm.weight'], sd[p + 'norm1.norm.bias']),
                sd,
                p + 'attn.',
                heads,
                clusters[i],
                angle,
            )
            x = x + (sd[p + 'gamma_1'] * y if p + 'gamma_1' in sd else y)
            h = F.gelu(
                F.conv2d(
                    channel_ln(x, sd[p + 'norm2.norm.weight'], sd[p + 'norm2.norm.bias']),
                    sd[p + 'ffn.fc1.weight'],
                    sd[p + 'ffn.fc1.bias'],
                )
            )
            h = h + F.conv2d(h, sd[p + 'ffn.dwconv.weight'], sd[p + 'ffn.dwconv.bias'], padding=1, groups=3 * c)
            y = F.conv2d(h, sd[p + 'ffn.fc2.weight'], sd[p + 'ffn.fc2.bias'])
            x = x + (sd[p + 'gamma_2'] * y if p + 'gamma_2' in sd else y)
        if i < 3:
            x = F.conv2d(
                x,
                sd[f'layers.{i}.downsample.reduction.weight'],
                sd[f'layers.{i}.downsample.reduction.bias'],
                stride=2,
                padding=1,
            )
            x = bn(x, sd, f'layers.{i}.downsample.norm')
    x = F.silu(bn(F.conv2d(x, sd['proj.weight'], sd['proj.bias']), sd, 'norm'))
    x = x.mean(dim=(2, 3), keepdim=True)
    return F.conv2d(x, sd['head.weight'], sd['head.bias']).flatten(1)


def converted_model(name, sd, **kwargs):
    model = timm.create_model(name, **kwargs).eval()
    model.load_state_dict(get_converter('secvit').convert_backbone(sd), strict=True)
    return model


# ---------------------------------------------------------------------------------------------------
# Architecture: counts, configs, initialisation


def test_timm_registry_and_pretrained_cfgs():
    assert set(timm.list_models('secvit_*')) == set(OFFICIAL)
    for name in OFFICIAL:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url == '' and cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'
        assert cfg.input_size == (3, 224, 224)
        assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN and cfg.std == timm.data.IMAGENET_DEFAULT_STD
        assert cfg.first_conv == 'patch_embed.proj.0' and cfg.classifier == 'head'
        assert 'Baidu' in ' '.join(cfg.notes)
    with pytest.raises(RuntimeError, match='pretrained_cfg_overlay'):
        timm.create_model('secvit_tiny', pretrained=True)


@pytest.mark.parametrize('name', list(OFFICIAL))
def test_parameter_and_entry_counts_equal_the_official(name):
    cfg = OFFICIAL[name]
    with torch.device('meta'):  # shapes only: no memory, no initialisation
        model = timm.create_model(name)
        backbone = SecViT(arch=name.split('_')[1])
    assert num_params(model) == cfg['params']
    state = model.state_dict()
    assert len(state) == cfg['entries']
    assert {
        k: tuple(v.shape)
        for k, v in get_converter('secvit')
        .convert_backbone({k: torch.empty(s, device='meta') for k, s in official_shapes(name).items()})
        .items()
    } == {k: tuple(v.shape) for k, v in state.items()}
    assert num_params(backbone) == cfg['backbone'] + 2 * sum(cfg['dims'])
    assert len(backbone.state_dict()) == cfg['entries'] - HEAD_ENTRIES + 2 * 4
    assert not any(k.startswith(('proj.', 'norm.', 'head.')) for k in backbone.state_dict())


def test_initialisation_drop_path_and_rope_buffers():
    with torch.device('meta'):
        base = SecViTClassifier('base')
    assert [[b.gamma_1 is not None for b in s.blocks] for s in base.stages] == [
        [i in (2, 3)] * d for i, d in enumerate(OFFICIAL['secvit_base']['depths'])
    ]
    rates = [b.drop_path.drop_prob for s in base.stages for b in s.blocks if hasattr(b.drop_path, 'drop_prob')]
    assert len(rates) == 45 and rates[-1] == pytest.approx(0.4)  # block 0 has rate 0 (Identity)
    assert all(b > a for a, b in zip(rates, rates[1:]))

    torch.manual_seed(0)
    arch = dict(
        embed_dims=(64, 128, 320, 512),
        depths=(1, 1, 2, 1),
        num_heads=(4, 4, 10, 16),
        layer_scale=(False, False, True, True),
    )
    model = SecViTClassifier(arch)
    for i, stage in enumerate(model.stages):
        for block in stage.blocks:
            if i in (2, 3):
                assert torch.equal(block.gamma_1, torch.full_like(block.gamma_1, 1e-6))
                assert torch.equal(block.gamma_2, torch.full_like(block.gamma_2, 1e-6))
        head_dim = arch['embed_dims'][i] // arch['num_heads'][i]
        assert torch.allclose(model.state_dict()[f'stages.{i}.rope.angle'], official_angle(head_dim))
    qkv = model.stages[2].blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002  # timm trunc_normal_ (bounds +-2, as the official)
    assert torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    ln = model.stages[1].blocks[0].norm1.norm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and ln.eps == 1e-6
    with pytest.raises(ValueError, match='not both'):
        SecViTClassifier('tiny', num_clusters=(4, 4, 4, 0), tokens_per_cluster=98)
    with pytest.raises(ValueError, match='divisible by 4'):
        SecViTClassifier(dict(embed_dims=(24, 48, 96, 192), depths=(1, 1, 1, 1), num_heads=(4, 8, 16, 32)))


@pytest.mark.parametrize('name', list(FVCORE_GMACS))
def test_macs_at_224_match_fvcore_without_norms(name):
    total, norms = FVCORE_GMACS[name]
    model = timm.create_model(name).eval()
    measured = count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9
    assert measured == pytest.approx(total - norms, rel=0.005)


# ---------------------------------------------------------------------------------------------------
# SECA against the listing; padding; equivariance


def _attention_with_official_weights(dim, heads, clusters, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    sd = {
        'qkv.weight': torch.randn(3 * dim, dim, 1, 1, generator=g) / math.sqrt(dim),
        'qkv.bias': 0.1 * torch.randn(3 * dim, generator=g),
        'lepe.weight': torch.randn(dim, 1, 5, 5, generator=g) / 5,
        'lepe.bias': 0.1 * torch.randn(dim, generator=g),
        'out_proj.weight': torch.randn(dim, dim, 1, 1, generator=g) / math.sqrt(dim),
        'out_proj.bias': 0.1 * torch.randn(dim, generator=g),
    }
    attn = SECAttention(dim, heads, clusters, **kwargs).eval()
    attn.load_state_dict(sd)
    return attn, sd


@pytest.mark.parametrize(
    'dim,heads,clusters,size', [(64, 2, 32, (16, 16)), (80, 5, 8, (8, 12)), (64, 2, 2, (6, 6)), (128, 4, 0, (5, 7))]
)
def test_seca_equals_the_papers_listing(dim, heads, clusters, size):
    """Same weights, N divisible by c: the module equals the listing (with the official RoPE and LCE)."""
    attn, sd = _attention_with_official_weights(dim, heads, clusters)
    rope = RoPE2d(dim // heads)
    assert torch.allclose(rope.angle, official_angle(dim // heads))
    x = torch.randn(2, dim, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = attn(x, rope(*size))
        attn.always_pad = True
        forced = attn(x, rope(*size))
    reference = listing_seca(x, sd, '', heads, clusters, official_angle(dim // heads))
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4), (ours - reference).abs().max()
    # the padding path with nothing to pad is the unpadded computation, bit for bit
    assert torch.equal(forced, ours)


@pytest.mark.parametrize('size,clusters', [((18, 18), 32), ((9, 13), 8), ((5, 7), 2), ((3, 3), 32)])
def test_seca_padded_path_equals_a_loop_over_balanced_clusters(size, clusters):
    """N not divisible by c: clusters of ceil(N/c) and ceil(N/c) - 1 tokens, padding masked, as the loop."""
    attn, sd = _attention_with_official_weights(64, 2, clusters, seed=3)
    rope = RoPE2d(32)
    x = torch.randn(1, 64, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = attn(x, rope(*size))
    effective = min(clusters, size[0] * size[1])
    assert attn.num_clusters_for(size[0] * size[1]) == effective
    reference = listing_seca(x, sd, '', 2, effective, official_angle(32))
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4), (ours - reference).abs().max()


@pytest.mark.parametrize('num_tokens,clusters', [(96, 8), (101, 8), (37, 5)])
def test_cluster_attention_is_permutation_equivariant(num_tokens, clusters):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, num_tokens, 8, generator=g).unbind(0)
    scores = SemanticScores()

    def run(q, k, v, descending=False):
        order = torch.argsort(scores(k), dim=-1, descending=descending)
        return equitable_cluster_attention(q, k, v, order, clusters)

    out = run(q, k, v)
    perm = torch.randperm(num_tokens, generator=g)
    permuted = run(q[:, :, perm], k[:, :, perm], v[:, :, perm])
    assert torch.allclose(permuted, out[:, :, perm], atol=1e-6)
    if num_tokens % clusters == 0:  # the same contiguous groups, numbered the other way round
        assert torch.allclose(run(q, k, v, descending=True), out, atol=1e-6)
    else:  # padding makes the last clusters one token shorter, so the direction changes the groups
        assert not torch.allclose(run(q, k, v, descending=True), out, atol=1e-6)


@pytest.mark.parametrize('layout', ['head-major', 'token-major', 'strided'])
def test_cluster_attention_gradients_equal_the_loop(layout):
    """Outputs and gradients of q, k, v equal the loop over clusters, padded (N = 101, c = 8), whatever the
    memory layout of the inputs."""
    g = torch.Generator().manual_seed(4)
    base = [torch.randn(2, 3, 101, 8, generator=g) for _ in range(3)]
    if layout == 'token-major':
        base = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in base]
    elif layout == 'strided':
        base = [torch.randn(2, 3, 101, 16, generator=g)[..., ::2] for _ in range(3)]
    weight = torch.randn(2, 3, 101, 8, generator=g)
    grads = []
    for fn in ('ours', 'loop'):
        q, k, v = (t.detach().clone().requires_grad_(True) for t in base)
        if fn == 'ours':
            out = equitable_cluster_attention(q, k, v, torch.argsort(SemanticScores()(k), dim=-1), 8, scale=1.0)
        else:
            out = listing_attention(q, k, v, 8)
        (out * weight).sum().backward()
        grads.append((out.detach(), q.grad, k.grad, v.grad))
    for ours, loop in zip(*grads):
        assert torch.allclose(ours, loop, atol=1e-5), (ours - loop).abs().max()


def test_cluster_ids_are_the_groups_attention_uses():
    """Changing the value of one token changes exactly the outputs of the tokens in its cluster."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 1, 37, 8, generator=g).unbind(0)
    order = torch.argsort(SemanticScores()(k), dim=-1)
    ids = cluster_ids(order, 5)[0, 0]
    assert sorted(torch.bincount(ids).tolist()) == [7, 7, 7, 8, 8]
    base = equitable_cluster_attention(q, k, v, order, 5)
    for token in (0, 17, 36):
        bumped = v.clone()
        bumped[0, 0, token] += 1.0
        changed = (equitable_cluster_attention(q, k, bumped, order, 5) - base).abs().amax(-1)[0, 0] > 1e-6
        assert torch.equal(changed, ids == ids[token])


# ---------------------------------------------------------------------------------------------------
# The whole network against the official forward; odd sizes; tokens_per_cluster; autocast


@pytest.mark.parametrize('name', ['secvit_tiny', 'secvit_base'])
def test_classifier_equals_the_official_forward(name):
    """An official-layout state dict through the converter: logits equal the official forward (downsampled
    chain, conv stem, layer scale, 1024-wide head) at 64x64, where every cluster count divides N."""
    sd = random_official_state_dict(name, seed=1)
    model = converted_model(name, sd)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)
        reference = official_forward(sd, name, x)
    assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max()
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pre.shape == (1, 1024) == (1, model.num_features)
    assert torch.allclose(model.get_classifier()(pre), ours)


def test_any_input_size_works():
    torch.manual_seed(0)
    model = timm.create_model('secvit_tiny').eval()
    backbone = SecViT('tiny').eval()
    for size in [(333, 517), (70, 70), (64, 64), (64, 512)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            logits = model(x)
            outs = backbone(x)
        assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
        expected = [size]
        for _ in range(5):
            expected.append(tuple(math.ceil(s / 2) for s in expected[-1]))
        assert [tuple(o.shape[2:]) for o in outs] == expected[2:6], size
        assert all(torch.isfinite(o).all() for o in outs)


def test_tokens_per_cluster_follows_the_input_and_is_the_paper_at_224():
    torch.manual_seed(0)
    fixed = SecViTClassifier('tiny').eval()
    linear = SecViTClassifier('tiny', tokens_per_cluster=98).eval()
    linear.load_state_dict(fixed.state_dict())  # same parameters, same keys

    def counts(model, height, width):
        height, width = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
        result = []
        for i, stage in enumerate(model.stages):
            if i:
                height, width = math.ceil(height / 2), math.ceil(width / 2)
            result.append(stage.blocks[0].attn.num_clusters_for(height * width))
        return result

    assert counts(fixed, 224, 224) == counts(linear, 224, 224) == [32, 8, 2, 1]
    assert counts(linear, 448, 448) == [128, 32, 8, 2]
    assert counts(fixed, 448, 448) == [32, 8, 2, 1]
    assert counts(linear, 800, 1280) == [654, 164, 41, 11]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(fixed(x), linear(x))
    # MACs: with fixed counts, clusters grow with the image (attention quadratic in N); with a fixed size,
    # the cost per token stays (linear)
    small, large = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 448, 448)
    ratio_linear = count_macs(linear, large) / count_macs(linear, small)
    ratio_fixed = count_macs(fixed, large) / count_macs(fixed, small)
    assert ratio_linear == pytest.approx(4.0, rel=0.02)
    assert ratio_fixed > ratio_linear + 0.1


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_scores_and_sort_in_fp32_and_finite(dtype):
    torch.manual_seed(0)
    model = SecViTClassifier('tiny', num_classes=10)
    watched = dict(model.fp32_modules())
    assert len(watched) == 2 + 2 + 9  # every block of the clustered stages 1-3
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in watched.values()]
    x = torch.randn(1, 3, 70, 70) * 3
    try:
        with torch.autocast('cpu', dtype=dtype):
            out = model(x)
        out.float().square().mean().backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {torch.float32}
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------------
# Backbone


def test_backbone_outputs_are_normed_stage_maps_before_downsampling():
    torch.manual_seed(0)
    backbone = SecViT('tiny').eval()
    classifier = SecViTClassifier('tiny').eval()
    missing, unexpected = classifier.load_state_dict(backbone.state_dict(), strict=False)
    assert sorted(set(k.split('.')[0] for k in missing)) == ['head', 'norm', 'proj']
    assert sorted(set(k.split('.')[0] for k in unexpected)) == ['extra_norms']
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for norm in backbone.extra_norms.values():  # non-trivial affine parameters
            norm.norm.weight.uniform_(0.5, 1.5)
            norm.norm.bias.normal_()
        outs = backbone(x)
        maps = classifier.forward_intermediates(x, intermediates_only=True)
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]
    for i, (out, stage_map) in enumerate(zip(outs, maps)):
        norm = backbone.extra_norms[str(i)].norm
        assert norm.eps == 1e-6
        assert torch.allclose(out, channel_ln(stage_map, norm.weight, norm.bias), atol=1e-5)
    assert set(backbone.state_dict()) >= {f'extra_norms.{i}.norm.{p}' for i in range(4) for p in ('weight', 'bias')}
    partial = SecViT('tiny', out_indices=(1, 3), frozen_stages=2).train()
    assert sorted(partial.extra_norms) == ['1', '3'] and len(partial(x)) == 2
    assert all(not p.requires_grad for p in partial.extra_norms['1'].parameters())
    assert all(p.requires_grad for p in partial.extra_norms['3'].parameters())


def test_backbone_with_cp_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = SecViT('tiny', drop_path_rate=0.1).train()
    checkpointed = SecViT('tiny', drop_path_rate=0.1, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert all(torch.allclose(results[0][1][n], results[1][1][n], atol=1e-6) for n in results[0][1])


def test_cluster_maps_colour_every_token_once():
    torch.manual_seed(0)
    model = SecViTClassifier('tiny').eval()
    maps = model.cluster_maps(torch.randn(1, 3, 224, 224))
    assert list(maps) == ['stages.0.blocks.0.attn', 'stages.1.blocks.0.attn', 'stages.2.blocks.0.attn']
    assert [tuple(m.shape) for m in maps.values()] == [(1, 32, 56, 56), (1, 8, 28, 28), (1, 2, 14, 14)]
    for m in maps.values():
        assert torch.equal(m.sum(1), torch.ones_like(m[:, 0]))
        assert torch.equal(m.sum((2, 3)), torch.full_like(m.sum((2, 3)), 98))
    # 5 tokens per cluster at 64 x 96: 77 / 5 / ... clusters, padded where 5 does not divide N; every block
    # of every stage clusters, stage 4 included (6 tokens, 2 clusters)
    odd = SecViT('tiny', tokens_per_cluster=5).cluster_maps(torch.randn(1, 3, 64, 96), all_blocks=True)
    assert len(odd) == 2 + 2 + 9 + 2
    assert odd['stages.0.blocks.1.attn'].shape == (1, 77, 16, 24)
    assert all(torch.equal(m.sum(1), torch.ones_like(m[:, 0])) for m in odd.values())


# ---------------------------------------------------------------------------------------------------
# Converter and loading official files


def test_converter_is_strict_and_detects_the_family():
    sd = {k: torch.empty(s, device='meta') for k, s in official_shapes('secvit_tiny').items()}
    assert detect_family(sd) == 'secvit'
    converter = get_converter('secvit')
    converted = converter.convert_backbone(sd)
    assert 'stages.1.downsample.reduction.weight' in converted and 'stages.3.rope.angle' in converted
    assert converter.convert_backbone(converted) == converted  # our own layout passes unchanged
    for bad in (
        'layers.0.blocks.0.attn.q.weight',
        'layers.3.downsample.reduction.weight',
        'layers.0.blocks.0.attn.qkv.weight_orig',
        'model_ema.proj.weight',
    ):
        with pytest.raises(KeyError, match=bad.replace('.', r'\.')):
            converter.convert_backbone(dict(sd, **{bad: torch.empty(1, device='meta')}))
    detector = OrderedDict((f'backbone.{k}', v) for k, v in sd.items() if not k.startswith(('proj', 'norm.', 'head')))
    detector['neck.conv.weight'] = torch.empty(1, device='meta')
    out, kind = converter.convert_checkpoint(detector)
    assert kind == 'detection' and 'backbone.stages.2.downsample.norm.running_var' in out and 'neck.conv.weight' in out


def test_timm_pretrained_loads_an_official_file(tmp_path):
    sd = random_official_state_dict('secvit_small', seed=2)
    ema = OrderedDict((k, v + 1 if v.is_floating_point() else v) for k, v in sd.items())
    path = tmp_path / 'secvit_s.pth'
    torch.save({'model': sd, 'model_ema': ema, 'epoch': 263}, path)
    expected = get_converter('secvit').convert_backbone(sd)
    overlay = dict(file=str(path))
    model = timm.create_model('secvit_small', pretrained=True, pretrained_cfg_overlay=overlay)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())  # 'model', not 'model_ema'
    finetune = timm.create_model('secvit_small', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)
    state = finetune.state_dict()
    assert torch.equal(state['proj.weight'], sd['proj.weight']) and torch.equal(
        state['norm.running_var'], sd['norm.running_var']
    )
    assert state['head.weight'].shape == (10, 1024, 1, 1)
    features = timm.create_model(
        'secvit_small', pretrained=True, pretrained_cfg_overlay=overlay, features_only=True, out_indices=(0, 1)
    )
    own = features.model.state_dict()
    assert not any(k.startswith(('proj.', 'norm.', 'head.', 'stages.2')) for k in own)
    assert all(torch.equal(v, expected[k]) for k, v in own.items())


def test_backbone_init_cfg_loads_an_official_file(tmp_path):
    sd = random_official_state_dict('secvit_tiny', seed=3)
    path = tmp_path / 'secvit_t.pth'
    torch.save({'model': sd}, path)
    backbone = SecViT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    state = backbone.state_dict()
    assert torch.equal(state['stages.1.downsample.reduction.weight'], sd['layers.0.downsample.reduction.weight'])
    assert torch.equal(state['stages.2.blocks.8.attn.qkv.weight'], sd['layers.2.blocks.8.attn.qkv.weight'])
    assert torch.equal(state['patch_embed.proj.10.running_var'], sd['patch_embed.proj.10.running_var'])
    assert torch.equal(state['extra_norms.0.norm.weight'], torch.ones(64))  # not in the checkpoint: fresh
