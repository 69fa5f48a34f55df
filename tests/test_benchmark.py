"""tools/analysis_tools/benchmark.py: models side by side, several shapes, dtypes, table, JSON and plot."""
import importlib.util
import json

import pytest

from .tools_helpers import ROOT


def benchmark_main():
    spec = importlib.util.spec_from_file_location('benchmark', ROOT / 'tools/analysis_tools/benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_backbones_against_mmdet_backbones(tmp_path, capsys):
    rows = benchmark_main()(['paca-tiny', 'pvtv2-b1', 'swin-t', '--shapes', '64', '96x64', '--dtype', 'fp32', 'bf16',
                             '--warmup', '1', '--iters', '2', '--device', 'cpu', '--json', str(tmp_path / 'b.json'),
                             '--plot', str(tmp_path / 'b.png')])
    assert len(rows) == 3 * 2 * 2
    table = capsys.readouterr().out
    for name in ('paca-tiny', 'pvtv2-b1', 'swin-t'):
        assert f'| {name} ' in table
    saved = json.loads((tmp_path / 'b.json').read_text())
    assert {(r['model'], r['height'], r['width'], r['dtype']) for r in saved} >= {('paca-tiny', 96, 64, 'bf16')}
    assert all(r['latency_ms'] > 0 and r['throughput'] > 0 for r in saved)
    assert all(r['peak_memory_mib'] is None or r['peak_memory_mib'] > 100 for r in saved)  # peak RSS on CPU
    assert [r['params_m'] for r in saved if r['model'] == 'paca-tiny'][0] == pytest.approx(11.8, abs=0.05)
    assert (tmp_path / 'b.png').stat().st_size > 10_000


def test_full_models_from_configs_and_timm():
    main = benchmark_main()
    seg = main(['configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py', 'timm:paca_tiny',
                '--shapes', '64', '--warmup', '0', '--iters', '1', '--device', 'cpu'])
    assert [r.model for r in seg] == ['paca-head_paca-tiny_8xb2-160k_ade20k-512x512', 'timm:paca_tiny']
    assert seg[0].params_m == pytest.approx(13.33, abs=0.01)
    backbone = main(['configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py', '--backbone-only', '--shapes', '64',
                     '--warmup', '0', '--iters', '1', '--device', 'cpu'])
    assert backbone[0].model.endswith('(backbone)') and backbone[0].params_m == pytest.approx(11.8, abs=0.05)


def test_bad_arguments():
    main = benchmark_main()
    with pytest.raises(SystemExit):
        main(['paca-huge', '--device', 'cpu'])
    with pytest.raises(SystemExit):
        main(['paca-tiny', '--shapes', '12x', '--device', 'cpu'])


def test_check_amp_tool_on_cpu():
    spec = importlib.util.spec_from_file_location('check_amp', ROOT / 'tools/analysis_tools/check_amp.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(['paca-small-teacher', 'timm:paca_tiny',
                           'configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py',
                           '--shapes', '64', '--steps', '3', '--device', 'cpu'])
    assert len(results) == 3 * 2
    assert all(r['ok'] and r['finite'] and r['applied'] >= 1 and r['assignment'] == 'float32' for r in results)

    with pytest.raises(SystemExit):
        module.main(['paca-tiny', '--steps', '0', '--device', 'cpu'])
    with pytest.raises(SystemExit, match='only segmentor configs'):
        module.main(['configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py', '--device', 'cpu'])
