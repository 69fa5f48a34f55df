"""The analysis tools on a family they have never seen (tests/tools_analysis/toy_family.py): presets from its
arch table, benchmark (inference and training), get_flops, check_amp through fp32_modules(), and
visualize_clusters through cluster_maps() with its checkpoint converted by its own converter."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmcluster.models.backbones.base import HierarchicalViT
from mmcluster.models.backbones.paca_vit import PACA_ARCHS, PaCaViT
from mmcluster.models.layers import SoftAssignment
from mmcluster.utils.benchmark import backbone_presets, family_presets, training_loss
from mmcluster.visualization import NoClusterMapsError, image_cluster_maps
from tests.tools_helpers import load_tool

from .toy_family import OFFICIAL_PREFIX, TOY_ARCHS, ToyBackbone, ToyViT

REFERENCES = ('pvtv2-b1', 'pvtv2-b2', 'pvtv2-b3', 'swin-t', 'swin-s', 'resnet50')


def test_presets_come_from_the_arch_tables(toy_family, capsys):
    presets = backbone_presets()
    for arch in PACA_ARCHS:
        assert presets[f'paca-{arch}'.replace('_', '-')] == dict(type=PaCaViT, arch=arch)
    assert presets['paca-small-teacher'] == dict(type=PaCaViT, arch='small_teacher')  # the names docs use
    assert presets['paca-small-mlp'] == dict(type=PaCaViT, arch='small', clustering='mlp')
    assert presets['toy-mini'] == dict(type=ToyBackbone, arch='mini')
    assert presets['toy-wide-teacher'] == dict(type=ToyBackbone, arch='wide_teacher')
    assert all(isinstance(presets[name]['type'], str) for name in REFERENCES)  # mmdet's, by registry name
    load_tool('tools/analysis_tools/benchmark.py').main(['--list'])
    listed = capsys.readouterr().out
    assert "toy-mini             dict(type=ToyBackbone, arch='mini')" in listed and 'swin-t ' in listed
    with pytest.raises(ValueError, match="two backbones define the preset 'toy-mini'"):
        family_presets([ToyBackbone, ToyBackbone])


def test_no_presets_of_a_family_that_is_not_listed():
    assert not any(name.startswith('toy-') for name in backbone_presets())
    assert set(family_presets([PaCaViT])) == {f'paca-{a}'.replace('_', '-') for a in PACA_ARCHS}


def test_benchmark_and_get_flops_on_a_new_family(toy_family):
    params = sum(p.numel() for p in ToyBackbone('mini').parameters())
    benchmark = load_tool('tools/analysis_tools/benchmark.py').main
    (inference,) = benchmark(['toy-mini', '--shapes', '32', '--warmup', '0', '--iters', '1', '--device', 'cpu'])
    assert inference.mode == 'inference' and inference.params_m == pytest.approx(params / 1e6)
    (train,) = benchmark(
        ['toy-mini', '--train', '--with-cp', '--shapes', '32', '--warmup', '1', '--iters', '1', '--device', 'cpu']
    )
    assert train.mode == 'train' and train.with_cp
    # parameters and AdamW's two moments are held through the step
    assert train.peak_memory_mib * 2**20 >= 3 * 4 * params and train.step_memory_mib > 0

    result = load_tool('tools/analysis_tools/get_flops.py').main(['toy-mini', '--shape', '32'])
    assert result['params'] == params
    assert list(result['macs_by_module']) == ['patch_embed', 'stages.0', 'stages.1', 'stages.2', 'stages.3']
    assert result['macs_by_module']['patch_embed'] == (32 // 4) ** 2 * 8 * 3 * 4 * 4  # 4x4 stride-4 conv, 3 -> 8
    assert result['macs'] == sum(result['macs_by_module'].values())


def test_check_amp_watches_what_fp32_modules_names(toy_family):
    check_amp = load_tool('tools/analysis_tools/check_amp.py')
    watched = check_amp.fp32_modules(ToyBackbone('mini'))
    assert list(watched) == ['stages.0.assign', 'stages.1.assign', 'stages.2.assign']  # stage 3: no clusters
    wrapped = check_amp.fp32_modules(torch.nn.ModuleDict(dict(backbone=ToyBackbone('mini'), head=SoftAssignment())))
    assert list(wrapped) == [
        'backbone.stages.0.assign',
        'backbone.stages.1.assign',
        'backbone.stages.2.assign',
        'head',
    ]  # outside a protocol implementer: the fp32_output marker

    results = check_amp.main(['toy-mini', '--shapes', '32', '--steps', '2', '--batch-size', '1', '--device', 'cpu'])
    assert [r['dtype'] for r in results] == ['fp16', 'bf16']
    assert all(
        r['ok']
        and r['fp32_modules'] == 3
        and r['fp32_ran'] == 3
        and r['output_dtypes'] == 'float32'
        and not r['not_fp32']
        for r in results
    )


@pytest.mark.parametrize('dtype', ['fp16', 'bf16'])
def test_check_amp_catches_a_module_that_returns_fp16(dtype):
    check_amp = load_tool('tools/analysis_tools/check_amp.py')
    model = ToyBackbone('mini', assign_dtype=torch.float16)
    result = check_amp.check(
        'toy-mini (fp16 softmax)', model, training_loss(model, 'backbone'), dtype, (32, 32), 'cpu', steps=2, batch=1
    )
    assert result['finite'] and result['applied'] >= 1
    assert not result['ok']
    assert result['not_fp32'] == [f'stages.{i}.assign: float16' for i in range(3)]
    assert 'not fp32: stages.0.assign: float16' in check_amp.report(result)


def _image(path):
    Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_visualize_clusters_on_a_new_family(toy_family, tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/visualize_clusters.py')
    torch.manual_seed(1)
    source = ToyViT('mini').state_dict()
    torch.save({'model': {OFFICIAL_PREFIX + k: v for k, v in source.items()}}, tmp_path / 'official.pth')

    fresh = ToyViT('mini')
    assert tool.classifier_family(fresh) is None  # neither a family attribute nor a family's module
    assert tool.classifier_family(fresh, {OFFICIAL_PREFIX + 'head.weight': torch.zeros(1)}) == 'toy'
    loaded = tool.build_classifier('toycluster_mini', str(tmp_path / 'official.pth'), False, 'cpu')
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.items())

    image = _image(tmp_path / 'x.png')
    tool.main(
        [
            'timm:toycluster_mini',
            str(image),
            '--out-dir',
            str(tmp_path / 'vis'),
            '--checkpoint',
            str(tmp_path / 'official.pth'),
            '--label',
            '2',
            '--top-k',
            '1',
            '--all-clusters',
        ]
    )
    out = capsys.readouterr().out
    for stage, clusters in enumerate(TOY_ARCHS['mini']['clusters'][:3]):
        assert f'stages.{stage}.to_clusters: ' in out and f'/ {clusters} clusters' in out
        assert (tmp_path / 'vis' / f'x_stages-{stage}-to_clusters_all.png').is_file()
    assert 'stages.3' not in out
    assert (tmp_path / 'vis' / 'x_clusters.png').is_file() and (tmp_path / 'vis' / 'x_groups.png').is_file()

    torch.save(
        {OFFICIAL_PREFIX + k: v for k, v in source.items() if not k.startswith('stages.3.')}, tmp_path / 'partial.pth'
    )
    with pytest.raises(SystemExit):
        tool.main(
            [
                'timm:toycluster_mini',
                str(image),
                '--out-dir',
                str(tmp_path),
                '--checkpoint',
                str(tmp_path / 'partial.pth'),
            ]
        )
    assert 'lacks 4 tensors of ToyViT (family toy)' in capsys.readouterr().err


def test_cluster_maps_of_detectors_and_segmentors_come_from_the_backbone():
    tool = load_tool('tools/analysis_tools/visualize_clusters.py')

    class Segmentor(torch.nn.Module):  # an mm model's shape: a backbone, no decode head with clusters
        def __init__(self):
            super().__init__()
            self.backbone = ToyBackbone('wide_teacher')

    layers, names = tool.detector_or_segmentor_layers(Segmentor(), torch.randn(2, 3, 64, 48))
    assert {k: tuple(v.shape) for k, v in layers.items()} == {
        'stages.0.to_clusters': (5, 16, 12),
        'stages.1.to_clusters': (5, 8, 6),
        'stages.2.to_clusters': (5, 4, 3),
        'stages.3.to_clusters': (5, 2, 1),
    }
    assert names == {}


def test_models_without_the_protocol_are_refused():
    class NoMaps(ToyViT):
        cluster_maps = HierarchicalViT.cluster_maps  # NotImplementedError

    with pytest.raises(NoClusterMapsError, match='NoMaps does not implement cluster_maps'):
        image_cluster_maps(NoMaps(), torch.randn(1, 3, 32, 32))
    with pytest.raises(NoClusterMapsError, match='Conv2d does not implement the cluster-map protocol'):
        image_cluster_maps(torch.nn.Conv2d(3, 3, 1), torch.randn(1, 3, 32, 32))

    class FlatMaps(ToyViT):
        def cluster_maps(self, x):
            return {'flat': torch.zeros(x.shape[0], 4, 16)}

    with pytest.raises(ValueError, match="'flat' must be a \\(B, M, h, w\\) tensor with B = 1, got \\(1, 4, 16\\)"):
        image_cluster_maps(FlatMaps(), torch.randn(1, 3, 32, 32))
