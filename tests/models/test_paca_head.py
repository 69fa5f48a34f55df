"""PaCaHead (paper Sec. 3.4): structure, losses and the ADE20K model size."""

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

HEAD = dict(
    type='PaCaHead',
    in_channels=[96, 192, 320, 384],
    in_index=[0, 1, 2, 3],
    channels=256,
    dropout_ratio=0.1,
    num_classes=150,
    norm_cfg=dict(type='BN'),
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
)


def features(batch=2, size=64):
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip((96, 192, 320, 384), (4, 8, 16, 32))]


def test_ade20k_model_size_matches_the_paper():
    from mmengine.registry import init_default_scope

    init_default_scope('mmseg')
    model = MODELS.build(
        dict(
            type='EncoderDecoder',
            backbone=dict(type='PaCaViT', arch='tiny', num_clusters=(200, 200, 200, 0)),
            decode_head=dict(HEAD, norm_cfg=dict(type='SyncBN', requires_grad=True)),
            test_cfg=dict(mode='whole'),
        )
    )
    total = sum(p.numel() for p in model.parameters())
    assert total == 13_326_764  # official README: 13.33M
    assert round(total / 1e6, 2) == 13.33


def test_forward_shapes_and_assignment():
    head = MODELS.build(HEAD).eval()
    feats = features(size=96)
    seg, clusters = head.forward_with_clusters(feats)
    assert seg.shape == clusters.shape == (2, 150, 24, 24)
    assert torch.equal(head(feats), seg)  # inference returns only the segmentation logits


def test_attention_is_single_head_and_unscaled():
    """Eqns. 9-13 written out: softmax over positions, clusters pool the fused features, no 1/sqrt(D)."""
    torch.manual_seed(0)
    head = MODELS.build(dict(HEAD, channels=16, num_classes=5, dropout_ratio=0.0)).eval()
    feats = features(batch=1, size=64)
    seg, cluster_logits = head.forward_with_clusters(feats)
    size = feats[0].shape[2:]
    fused = torch.cat(
        [
            torch.nn.functional.interpolate(conv(x), size=size, mode='bilinear', align_corners=False)
            for conv, x in zip(head.convs, feats)
        ],
        dim=1,
    )
    assignment = torch.softmax(head.to_clusters(head.cluster_embed(fused)).flatten(2), dim=-1)
    tokens = fused.flatten(2).transpose(1, 2)
    clusters = assignment @ tokens
    q = head.query(fused).flatten(2).transpose(1, 2)
    k, v = head.key(clusters), head.value(clusters)
    out = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    expected = head.conv_seg(head.proj(out.transpose(1, 2).reshape(1, 16, *size)))
    assert torch.allclose(seg, expected, atol=1e-4)


def test_loss_includes_the_auxiliary_cluster_loss():
    head = MODELS.build(dict(HEAD, num_classes=4)).train()
    samples = []
    for _ in range(2):
        sample = SegDataSample()
        label = torch.randint(0, 4, (1, 64, 64))
        label[:, :4] = 255
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    losses = head.loss(features(size=64), samples, train_cfg={})
    assert set(losses) == {'loss_ce', 'acc_seg', 'loss_cluster', 'acc_cluster'}
    assert head.loss_cluster.loss_weight == pytest.approx(0.4)
    assert torch.isfinite(losses['loss_cluster']) and losses['loss_cluster'] > 0
    (losses['loss_ce'] + losses['loss_cluster']).backward()
    assert head.to_clusters.weight.grad.abs().sum() > 0


def test_norms_follow_norm_cfg():
    head = MODELS.build(dict(HEAD, norm_cfg=dict(type='GN', num_groups=8)))
    assert isinstance(head.key.norm, torch.nn.GroupNorm) and isinstance(head.convs[0].gn, torch.nn.GroupNorm)
    head.eval()(features(batch=1, size=32))


@pytest.mark.parametrize(
    'kwargs,message',
    [
        (dict(input_transform='resize_concat'), 'input_transform'),
        (dict(norm_cfg=None), 'norm_cfg'),
        (dict(channels=0), 'channels'),
        (dict(num_classes=0), 'num_classes'),
        (dict(channels=-8), 'channels'),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(dict(HEAD, **kwargs))
