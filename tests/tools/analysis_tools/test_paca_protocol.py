"""The analysis tools on PaCa-ViT go through the same protocol as on any family: fp32_modules() for
check_amp, cluster_maps() and the family's converter for visualize_clusters, the arch table's presets for
get_flops and benchmark (whose training mode reports memory)."""

import pytest
import torch

from mmcluster.models.backbones.paca_vit import PaCaViT, PaCaViTClassifier
from mmcluster.models.conversion import get_converter
from mmcluster.utils.benchmark import measure_train, training_loss
from tests.official_layout import official_backbone_shapes, random_state_dict
from tests.tools_helpers import load_tool


def test_check_amp_watches_pacas_soft_assignments():
    fp32_modules = load_tool('tools/analysis_tools/check_amp.py').fp32_modules
    assert list(fp32_modules(PaCaViT('tiny'))) == [f'stages.{i}.blocks.0.attn.assign' for i in range(3)]
    assert list(fp32_modules(PaCaViT('tiny', assignment='block'))) == [
        f'stages.{i}.blocks.{j}.attn.assign' for i, depth in enumerate((2, 2, 4)) for j in range(depth)
    ]
    assert list(fp32_modules(PaCaViT('tiny_teacher'))) == ['teacher.assign']


def test_visualize_clusters_loads_official_checkpoints_through_the_family_converter(tmp_path):
    tool = load_tool('tools/analysis_tools/visualize_clusters.py')
    assert tool.classifier_family(PaCaViTClassifier('tiny', num_classes=0)) == 'paca_vit'  # by its module
    official = random_state_dict(official_backbone_shapes('tiny'), seed=3)
    torch.save({'state_dict': official}, tmp_path / 'official.pth')
    model = tool.build_classifier('paca_tiny', str(tmp_path / 'official.pth'), False, 'cpu')
    expected = get_converter('paca_vit').convert_backbone(official)
    assert set(expected) == set(model.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    maps = load_tool('tools/analysis_tools/visualize_clusters.py').image_cluster_maps(model, torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        'stages.0.blocks.0.attn.clustering': (100, 16, 24),
        'stages.1.blocks.0.attn.clustering': (100, 8, 12),
        'stages.2.blocks.0.attn.clustering': (100, 4, 6),
    }


def test_get_flops_of_a_preset_is_the_classifier_without_its_head():
    get_flops = load_tool('tools/analysis_tools/get_flops.py').main
    backbone = get_flops(['paca-tiny', '--shape', '224'])
    classifier = get_flops(['timm:paca_tiny', '--shape', '224'])
    assert backbone['params'] == classifier['params'] - (384 * 1000 + 1000)
    assert backbone['macs'] == classifier['macs'] - 384 * 1000
    assert list(backbone['macs_by_module']) == ['patch_embed', 'stages.0', 'stages.1', 'stages.2', 'stages.3']


def test_training_steps_report_memory_and_with_cp_lowers_it(toy_family, capsys):
    """benchmark.py --train on a preset, with and without --with-cp (the toy family: a small network whose
    stages honour set_grad_checkpointing as PaCa's do)."""
    rows = []
    for extra in ([], ['--with-cp']):
        rows += load_tool('tools/analysis_tools/benchmark.py').main(
            ['toy-wide-teacher', '--train', '--shapes', '64', '--iters', '1', '--device', 'cpu', *extra]
        )
    plain, with_cp = rows
    table = capsys.readouterr().out
    assert '| train, with_cp ' in table and '| train ' in table
    assert (plain.mode, plain.with_cp, with_cp.mode, with_cp.with_cp) == ('train', False, 'train', True)
    _check_training_memory(plain, with_cp)


def _check_training_memory(plain, with_cp):
    params_bytes = plain.params_m * 1e6 * 4
    for row in (plain, with_cp):
        # held through the step: parameters and AdamW's two moments; the rise includes the gradients
        assert row.peak_memory_mib * 2**20 >= 3 * params_bytes
        assert row.step_memory_mib * 2**20 >= params_bytes
        held = row.peak_memory_mib - row.step_memory_mib
        assert held == pytest.approx(plain.peak_memory_mib - plain.step_memory_mib, abs=0.01)  # same model
        assert row.peak_rss_mib > 100  # the whole process: Python, torch, mmdet
        assert row.latency_ms > 0
    assert with_cp.step_memory_mib < plain.step_memory_mib  # fewer activations kept for the backward pass


def test_paca_with_cp_lowers_the_memory_of_a_training_step():
    arch = dict(embed_dims=(16, 32, 48, 64), depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4))
    rows = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = PaCaViT(arch, num_clusters=(8, 8, 8, 0), with_cp=with_cp)
        rows.append(
            measure_train('paca', model, training_loss(model, 'backbone'), 64, 64, warmup=1, iters=1, with_cp=with_cp)
        )
    _check_training_memory(*rows)
