"""Official PaCa-ViT state-dict layouts, written out from the official key layout (models/paca_vit.py and the
PaCa head of iVMCL/PaCaViT) and independent of mmcluster's modules, to test the converters against."""

from collections import OrderedDict

import torch

ARCHS = {  # (dims, depths) of the official _arch_settings
    'tiny': ((96, 192, 320, 384), (2, 2, 4, 2)),
    'small': ((96, 192, 320, 384), (3, 3, 10, 3)),
    'base': ((96, 192, 384, 512), (3, 3, 18, 3)),
    'tiny_teacher': ((96, 192, 320, 384), (2, 2, 2, 2)),
    'small_teacher': ((96, 192, 320, 384), (3, 3, 7, 3)),
    'base_teacher': ((96, 192, 384, 512), (3, 3, 16, 3)),
}
TEACHER_DEPTHS = {'tiny_teacher': (2, 2, 2, 2), 'small_teacher': (2, 2, 2, 2), 'base_teacher': (2, 2, 4, 2)}


def _bn(prefix, c):
    return {
        f'{prefix}.weight': (c,),
        f'{prefix}.bias': (c,),
        f'{prefix}.running_mean': (c,),
        f'{prefix}.running_var': (c,),
        f'{prefix}.num_batches_tracked': (),
    }


def official_backbone_shapes(arch, clusters=None, clustering='conv', blockwise=False, head=True):
    dims, depths = ARCHS[arch]
    teacher = arch in TEACHER_DEPTHS
    clusters = clusters or ((100,) * 4 if teacher else (100, 100, 100, 0))
    s = OrderedDict()
    c0 = dims[0]
    s.update(
        {
            'patch_embed.proj.0.weight': (c0 // 2, 3, 3, 3),
            'patch_embed.proj.0.bias': (c0 // 2,),
            'patch_embed.proj.1.weight': (c0, c0 // 2, 3, 3),
            'patch_embed.proj.1.bias': (c0,),
            'patch_embed.norm.weight': (c0,),
            'patch_embed.norm.bias': (c0,),
        }
    )
    for i, (c, depth, m) in enumerate(zip(dims, depths, clusters), start=1):
        for j in range(depth):
            p = f'stage{i}.{j}'
            s[f'{p}.norm1_before.weight'] = s[f'{p}.norm1_before.bias'] = (c,)
            if m > 0:
                s[f'{p}.attn.cluster_norm.weight'] = s[f'{p}.attn.cluster_norm.bias'] = (c,)
                if not teacher and (j == 0 or blockwise):
                    q = f'{p}.attn.clustering.clustering'
                    if clustering == 'conv':
                        s.update(
                            {
                                f'{q}.0.weight': (c, 1, 7, 7),
                                f'{q}.0.bias': (c,),
                                f'{q}.2.weight': (c, c, 1, 1),
                                f'{q}.2.bias': (c,),
                                f'{q}.4.weight': (m, c, 1, 1),
                            }
                        )
                    else:
                        s.update(
                            {
                                f'{q}.0.weight': (4 * c, c),
                                f'{q}.0.bias': (4 * c,),
                                f'{q}.2.weight': (m, 4 * c),
                                f'{q}.2.bias': (m,),
                            }
                        )
            for name in ('q', 'k', 'v', 'proj'):
                s[f'{p}.attn.{name}.weight'] = (c, c)
                s[f'{p}.attn.{name}.bias'] = (c,)
            s[f'{p}.norm2_before.weight'] = s[f'{p}.norm2_before.bias'] = (c,)
            s.update(
                {
                    f'{p}.mlp.fc1.weight': (4 * c, c),
                    f'{p}.mlp.fc1.bias': (4 * c,),
                    f'{p}.mlp.dwconv.dwconv.weight': (4 * c, 1, 3, 3),
                    f'{p}.mlp.dwconv.dwconv.bias': (4 * c,),
                    f'{p}.mlp.fc2.weight': (c, 4 * c),
                    f'{p}.mlp.fc2.bias': (c,),
                }
            )
        s[f'norm{i}.weight'] = s[f'norm{i}.bias'] = (c,)
        if i < 4:
            s.update(
                {
                    f'transition{i}.proj.weight': (dims[i], c, 3, 3),
                    f'transition{i}.proj.bias': (dims[i],),
                    f'transition{i}.norm.weight': (dims[i],),
                    f'transition{i}.norm.bias': (dims[i],),
                }
            )
    if head:
        s['head.weight'] = (1000, dims[-1])
        s['head.bias'] = (1000,)
    if teacher:
        t = 'paca_teacher'

        def convmixer(prefix, c):
            out = {f'{prefix}.0.fn.0.weight': (c, 1, 7, 7), f'{prefix}.0.fn.0.bias': (c,)}
            out.update(_bn(f'{prefix}.0.fn.2', c))
            out.update({f'{prefix}.1.weight': (c, c, 1, 1), f'{prefix}.1.bias': (c,)})
            out.update(_bn(f'{prefix}.3', c))
            return out

        for i, (c, depth) in enumerate(zip(dims, TEACHER_DEPTHS[arch]), start=1):
            for j in range(depth):
                s.update(convmixer(f'{t}.block{i}.{j}', c))
            if i < 4:
                s.update(
                    {
                        f'{t}.transition{i}.0.blur_filter': (c, 1, 3, 3),
                        f'{t}.transition{i}.0.conv.weight': (dims[i], c, 3, 3),
                        f'{t}.transition{i}.0.conv.bias': (dims[i],),
                    }
                )
                s.update(_bn(f'{t}.transition{i}.2', dims[i]))
                s.update({f'{t}.lateral{i}.0.weight': (c, dims[i], 1, 1), f'{t}.lateral{i}.0.bias': (c,)})
                s.update(_bn(f'{t}.lateral{i}.2', c))
                s.update(convmixer(f'{t}.fpn{i}', c))
            if clusters[i - 1] > 0:
                s.update(
                    {
                        f'{t}.to_clusters{i}.weight': (clusters[i - 1], c, 1, 1),
                        f'{t}.to_clusters{i}.bias': (clusters[i - 1],),
                    }
                )
    return s


def official_head_shapes(in_channels=(96, 192, 320, 384), channels=256, num_classes=150):
    d, fused = channels, channels * len(in_channels)
    s = OrderedDict()
    for i, c in enumerate(in_channels):
        s[f'convs.{i}.conv.weight'] = (d, c, 1, 1)
        s.update(_bn(f'convs.{i}.bn', d))
    s['q.0.conv.weight'] = (d, fused, 1, 1)
    s.update(_bn('q.0.bn', d))
    s['clustering.0.conv.weight'] = (d, fused, 1, 1)
    s.update(_bn('clustering.0.bn', d))
    s.update({'clustering.1.weight': (num_classes, d, 1, 1), 'clustering.1.bias': (num_classes,)})
    for name in ('k', 'v'):
        s.update({f'{name}.0.weight': (d, fused), f'{name}.0.bias': (d,)})
        s.update(_bn(f'{name}.2', d))
    s['proj.conv.weight'] = (d, d, 1, 1)
    s.update(_bn('proj.bn', d))
    s.update({'conv_seg.weight': (num_classes, d, 1, 1), 'conv_seg.bias': (num_classes,)})
    return s


def random_state_dict(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (
            k,
            torch.randint(0, 5, shape)
            if k.endswith('num_batches_tracked')
            else torch.randn(shape, generator=generator),
        )
        for k, shape in shapes.items()
    )
