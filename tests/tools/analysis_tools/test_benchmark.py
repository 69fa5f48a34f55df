"""tools/analysis_tools/benchmark.py (models side by side: shapes, dtypes, table, JSON, plot) and check_amp.py."""

import json
import re

import pytest

from mmcluster.utils.benchmark import build_named_model
from tests.tools_helpers import ROOT, load_tool, run


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread (restored after each test): on a busy 2-core machine two spinning OpenMP threads make
    these small models many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def benchmark_main():
    return load_tool('tools/analysis_tools/benchmark.py').main


def test_backbones_against_mmdet_backbones(tmp_path, capsys):
    rows = benchmark_main()(
        [
            'paca-tiny',
            'pvtv2-b1',
            'swin-t',
            '--shapes',
            '64',
            '96x64',
            '--dtype',
            'fp32',
            'bf16',
            '--warmup',
            '1',
            '--iters',
            '2',
            '--device',
            'cpu',
            '--json',
            str(tmp_path / 'b.json'),
            '--plot',
            str(tmp_path / 'b.png'),
        ]
    )
    assert len(rows) == 3 * 2 * 2
    table = capsys.readouterr().out
    for name in ('paca-tiny', 'pvtv2-b1', 'swin-t'):
        assert f'| {name} ' in table
    saved = json.loads((tmp_path / 'b.json').read_text())
    assert {(r['model'], r['height'], r['width'], r['dtype']) for r in saved} >= {('paca-tiny', 96, 64, 'bf16')}
    assert all(r['latency_ms'] > 0 and r['throughput'] > 0 and r['mode'] == 'inference' for r in saved)
    assert all(0 < r['latency_min_ms'] <= r['latency_ms'] for r in saved)
    for r in saved:  # torch's peak: at least the fp32 weights, plus what the forward pass allocates
        assert r['peak_memory_mib'] >= r['params_m'] * 1e6 * 4 / 2**20 + r['step_memory_mib']
        assert r['step_memory_mib'] > 0
        assert r['peak_rss_mib'] > 100  # the whole process on the CPU
    assert [r['params_m'] for r in saved if r['model'] == 'paca-tiny'][0] == pytest.approx(11.8, abs=0.05)
    assert (tmp_path / 'b.png').stat().st_size > 10_000


def test_full_models_from_configs_and_timm():
    main = benchmark_main()
    seg = main(
        [
            'configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py',
            'timm:paca_tiny',
            '--shapes',
            '64',
            '--warmup',
            '0',
            '--iters',
            '1',
            '--device',
            'cpu',
        ]
    )
    assert [r.model for r in seg] == ['paca-head_paca-tiny_8xb2-160k_ade20k-512x512', 'timm:paca_tiny']
    assert seg[0].params_m == pytest.approx(13.33, abs=0.01)
    backbone = main(
        [
            'configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py',
            '--backbone-only',
            '--shapes',
            '64',
            '--warmup',
            '0',
            '--iters',
            '1',
            '--device',
            'cpu',
        ]
    )
    assert backbone[0].model.endswith('(backbone)') and backbone[0].params_m == pytest.approx(11.8, abs=0.05)


def test_bad_arguments(capsys):
    main = benchmark_main()
    with pytest.raises(SystemExit):
        main(['paca-huge', '--device', 'cpu'])
    assert "unknown model 'paca-huge': use a preset (paca-tiny, " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['paca-tiny', '--shapes', '12x', '--device', 'cpu'])
    with pytest.raises(SystemExit):
        main(['paca-tiny', '--iters', '0', '--device', 'cpu'])
    assert '--iters must be >= 1, got 0' in capsys.readouterr().err
    with pytest.raises(ValueError, match='unknown model'):  # the library raises, the tool exits
        build_named_model('paca-huge')
    with pytest.raises(ValueError, match="unknown timm model 'paca_huge'"):
        build_named_model('timm:paca_huge')


def test_library_code_raises_and_tools_import_the_installed_package():
    exits = re.compile(r'SystemExit|\bsys\.exit\(|\bparser\.error\(|(?<![\w.])(?:exit|quit)\(')  # not __exit__(
    for path in (ROOT / 'mmcluster').rglob('*.py'):
        found = exits.search(path.read_text())
        assert found is None, f'{path.relative_to(ROOT)} uses {found.group()}: library code raises exceptions'
    for path in (ROOT / 'tools' / 'analysis_tools').glob('*.py'):
        assert 'sys.path' not in path.read_text(), f'{path.relative_to(ROOT)} edits sys.path'
    # a script's own folder heads sys.path, not the repository: mmcluster comes from the installed package
    assert 'paca-small-teacher ' in run(['tools/analysis_tools/benchmark.py', '--list'])


def test_check_amp_tool_on_cpu(capsys):
    module = load_tool('tools/analysis_tools/check_amp.py')
    results = module.main(
        [
            'paca-small-teacher',
            'timm:paca_tiny',
            'configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py',
            '--shapes',
            '64',
            '--steps',
            '3',
            '--device',
            'cpu',
        ]
    )
    assert len(results) == 3 * 2
    assert all(
        r['ok']
        and r['finite']
        and r['applied'] >= 1
        and r['output_dtypes'] == 'float32'
        and r['fp32_ran'] == r['fp32_modules']
        and not r['not_fp32']
        for r in results
    )
    # the modules checked: the teacher's one assignment; one per clustered stage of PaCa-Tiny (0-2), and
    # the PaCa head's class-aligned assignment
    assert [r['fp32_modules'] for r in results] == [1, 1, 3, 3, 4, 4]

    with pytest.raises(SystemExit):
        module.main(['paca-tiny', '--steps', '0', '--device', 'cpu'])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        module.main(['configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py', '--device', 'cpu'])
    assert 'only segmentor configs are supported' in capsys.readouterr().err
