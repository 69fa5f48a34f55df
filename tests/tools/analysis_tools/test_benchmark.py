"""tools/analysis_tools/benchmark.py (models side by side: shapes, dtypes, table, JSON, plot) and check_amp.py."""

import json
import re
import statistics

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mmcluster.models.layers.row_bands import ONEDNN_LINEAR
from mmcluster.utils.benchmark import (
    ALLOCATOR_ENV,
    Measurement,
    add_first_ratios,
    build_named_model,
    count_flops,
    format_table,
    inference_benches,
    measure_bench,
    measure_interleaved,
    train_bench,
    training_loss,
)
from mmcluster.utils.flops import ONEDNN_FLOP_FORMULAS
from tests.tools_helpers import ROOT, load_tool, run

MASK_RCNN = 'configs/paca_vit/mask-rcnn_paca-small_fpn_1x_coco.py'
UPERNET = 'configs/paca_vit/upernet_paca-small_8xb2-160k_ade20k-512x512.py'


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
    with pytest.raises(SystemExit):
        main(['paca-tiny', '--train', '--compile', '--device', 'cpu'])
    assert '--compile times inference passes; it cannot be combined with --train' in capsys.readouterr().err
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


def test_interleaved_rounds_run_every_bench_once_a_round():
    calls = []
    benches = []
    for name in ('a', 'b'):
        bench = inference_benches(name, nn.Linear(2, 2), lambda x, name=name: calls.append(name), 4, 4)[0]
        benches.append(bench)
    rows = measure_interleaved(benches, warmup=2, iters=3)
    # warm-up per bench, then rounds of every bench, then one profiled pass each for the memory
    assert calls == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3 + ['a', 'b']
    assert [r.model for r in rows] == ['a', 'b'] and all(r.peak_rss_mib is None for r in rows)


def test_interleave_reports_the_latency_over_the_first_models(capsys):
    args = ['pvtv2-b1', 'paca-tiny', '--shapes', '32', '--warmup', '1', '--iters', '2', '--device', 'cpu']
    rows = benchmark_main()([*args, '--interleave'])
    assert [(r.model, r.mode_label) for r in rows] == [('pvtv2-b1', 'inference'), ('paca-tiny', 'inference')]
    assert rows[0].vs_first == 1.0
    assert rows[1].vs_first == pytest.approx(rows[1].latency_ms / rows[0].latency_ms)
    assert all(0 < r.latency_min_ms <= r.latency_ms and r.step_memory_mib > 0 for r in rows)
    ratios = [a / b for a, b in zip(rows[1].round_times_ms, rows[0].round_times_ms)]
    low, high = sorted(ratios)  # two rounds: the quartiles are a quarter, half and three quarters of the way
    assert rows[1].vs_first_rounds == pytest.approx([low + (high - low) * q for q in (0.25, 0.5, 0.75)])
    assert rows[0].vs_first_rounds == (1.0, 1.0, 1.0)
    table = capsys.readouterr().out
    q1, median, q3 = rows[1].vs_first_rounds
    assert '× first' in table and f'| {rows[1].vs_first:.2f} ' in table.splitlines()[-1]
    assert '× first, per round' in table and f'| {median:.2f} ({q1:.2f}-{q3:.2f}) ' in table.splitlines()[-1]
    assert '× first input' not in table  # one input size


def test_per_round_ratios_are_the_quartiles_of_each_rounds_ratio():
    def row(model, times):
        m = Measurement(model, 8, 8, 1, 'cpu', 'fp32', 1.0, statistics.median(times), 0.0, 1.0, None)
        m.round_times_ms = times
        return m

    # a slow spell from the middle of round 3 on: the second model's median pass (270 ms) is a slow one, the
    # first model's (100 ms) not, so the ratio of the medians is 2.7; every round but the third gives 0.9
    reference, other = row('ref', [100, 100, 100, 300, 300]), row('new', [90, 90, 270, 270, 270])
    lone = Measurement('lone', 8, 8, 1, 'cpu', 'fp32', 1.0, 50.0, 0.0, 1.0, None)  # not interleaved
    add_first_ratios([reference, other])
    assert other.vs_first == pytest.approx(2.7)
    assert other.vs_first_rounds == pytest.approx((0.9, 0.9, 0.9))
    add_first_ratios([reference, lone])
    assert lone.vs_first == pytest.approx(0.5) and lone.vs_first_rounds is None
    assert '× first, per round' in format_table([reference, other])
    assert '× first, per round' not in format_table([lone])


def test_two_input_sizes_report_each_models_growth(capsys):
    args = ['pvtv2-b1', 'paca-tiny', '--shapes', '32', '48x64', '--warmup', '1', '--iters', '2', '--device', 'cpu']
    rows = benchmark_main()([*args, '--interleave'])
    assert [(r.model, r.height, r.width) for r in rows] == [
        ('pvtv2-b1', 32, 32),
        ('pvtv2-b1', 48, 64),
        ('paca-tiny', 32, 32),
        ('paca-tiny', 48, 64),
    ]
    assert rows[0].vs_first_input == rows[2].vs_first_input == 1.0
    for first, second in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert second.vs_first_input == pytest.approx(second.latency_ms / first.latency_ms)
    assert rows[3].vs_first == pytest.approx(rows[3].latency_ms / rows[1].latency_ms)  # the first model's, 48x64
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith('| model')))
    assert '× first input' in lines[header]
    assert f'| {rows[3].vs_first_input:.2f} ' in lines[header + 5]
    ratios = [a / b for a, b in zip(rows[3].round_times_ms, rows[2].round_times_ms)]
    low, high = sorted(ratios)
    assert rows[3].vs_first_input_rounds == pytest.approx([low + (high - low) * q for q in (0.25, 0.5, 0.75)])
    assert '× first input, per round' in lines[header]


def _flops(fn) -> int:
    # torch's counter has no formula for oneDNN's fused conv + GELU and matmul (PaCa-ViT's depth-wise convs and
    # linear layers in CPU inference); mmcluster's formulas count them as torch counts convolutions and addmm
    with FlopCounterMode(display=False, custom_mapping=ONEDNN_FLOP_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize('before,after', [(100.0, 150.0), (200.0, 50.0)])
def test_gemm_rate_is_the_faster_of_before_and_after_the_passes(monkeypatch, capsys, before, after):
    """A slow spell during one of the two GEMM measurements does not lower the rate (nor raise the shares of it)."""
    tool = load_tool('tools/analysis_tools/benchmark.py')
    measured = iter([{'torch.mm': before, 'other': before / 2}, {'torch.mm': after, 'other': after / 2}])
    monkeypatch.setattr(tool, 'gemm_rates', lambda *args: next(measured))
    rows = tool.main(['pvtv2-b1', '--shapes', '32', '--warmup', '0', '--iters', '2', '--gemm-rate', '--interleave'])
    rate = max(before, after)
    assert rows[0].gemm_rate_gflops == rate and rows[0].gemm_fraction == pytest.approx(rows[0].gflops / rate)
    assert f'fp32 GEMM rate {rate:.1f} GFLOP/s (the fastest of torch.mm {rate:.1f}, other {rate / 2:.1f};' in (
        capsys.readouterr().out
    )


def test_gemm_rate_and_the_flops_of_a_pass(capsys):
    main = benchmark_main()
    args = ['--shapes', '32', '--warmup', '0', '--iters', '1', '--device', 'cpu', '--gemm-rate']
    rows = main(['paca-tiny', 'pvtv2-b1', *args])
    header = capsys.readouterr().out.splitlines()[0]
    found = re.search(
        r'fp32 GEMM rate ([\d.]+) GFLOP/s \(the fastest of (.*); 2048x2048, median of 5, the faster of a measurement '
        r'before and one after the timed passes\)',
        header,
    )
    rate = float(found.group(1))
    paths = dict(re.fullmatch(r'(.+) ([\d.]+)', path).groups() for path in found.group(2).split(', '))
    assert rate > 0 and rate == max(float(value) for value in paths.values())
    assert set(paths) == {'torch.mm'} | ({"oneDNN's matmul"} if ONEDNN_LINEAR is not None else set())
    assert re.search(r'device cpu \(.+, \d+ CPUs\)', header)
    images = torch.randn(1, 3, 32, 32)
    for row in rows:
        _, model, _ = build_named_model(row.model)
        model.eval()
        with torch.no_grad():
            plain = _flops(lambda: model(images))
            with sdpa_kernel(SDPBackend.MATH):  # attention as matrix products, which torch counts on CPUs too
                math_attention = _flops(lambda: model(images))
        assert round(row.gflop * 1e9) == math_attention
        assert row.gflops == pytest.approx(row.gflop / (row.latency_ms / 1000))
        assert row.gemm_rate_gflops == pytest.approx(rate, abs=0.05)
        assert row.gemm_fraction == pytest.approx(row.gflops / row.gemm_rate_gflops)
        # PaCa's attention runs in the CPU's fused kernel, which FlopCounterMode alone does not count
        assert (math_attention > plain) == (row.model == 'paca-tiny')

    # a training step: forward and backward (Swin-T: no grouped convolutions, no fused attention)
    [train] = main(['swin-t', '--train', *args])
    _, model, kind = build_named_model('swin-t')
    loss = training_loss(model, kind)
    assert round(train.gflop * 1e9) == _flops(lambda: loss(images).backward())


def test_the_header_names_the_allocator_settings(capsys, monkeypatch):
    """CPU latencies at detection resolutions depend on malloc's settings: the header says which were set."""
    main = benchmark_main()
    args = ['paca-tiny', '--shapes', '32', '--warmup', '0', '--iters', '1', '--device', 'cpu']
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    main(args)
    assert capsys.readouterr().out.splitlines()[0].endswith(', allocator: default malloc settings')
    monkeypatch.setenv('MALLOC_MMAP_THRESHOLD_', '1099511627776')
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '1099511627776')
    main(args)
    assert (
        capsys.readouterr()
        .out.splitlines()[0]
        .endswith(', allocator: MALLOC_MMAP_THRESHOLD_=1099511627776, MALLOC_TRIM_THRESHOLD_=1099511627776')
    )


def test_the_backward_of_a_depthwise_convolution_costs_twice_its_forward():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    forward = 2 * 2 * 5 * 5 * 8 * 3 * 3  # 2 FLOPs a multiply-add, per image, output point, channel, tap
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward  # input and weight gradients
    # torch's own formula: the forward, the input gradient and 8 times the weight gradient (fails once fixed)
    assert _flops(lambda: conv(x).sum().backward()) == 10 * forward


def test_compiled_next_to_eager(capsys):
    """The smallest real model: timm's test ViT (0.4 M parameters; inductor on 2 CPU cores compiles it in
    about 20 s with an empty cache, PVTv2-b1 in about 45 s)."""
    rows = benchmark_main()(
        [
            'timm:test_vit',
            '--shapes',
            '32',
            '--warmup',
            '0',
            '--iters',
            '2',
            '--device',
            'cpu',
            '--compile',
            '--interleave',
        ]
    )
    eager, compiled = rows
    assert (eager.mode_label, compiled.mode_label) == ('inference', 'inference, compiled')
    assert eager.vs_eager is None
    assert compiled.vs_eager == pytest.approx(compiled.latency_ms / eager.latency_ms)
    assert compiled.vs_first == 1.0  # the first (only) model's compiled row
    table = capsys.readouterr().out
    assert '× eager' in table and '| inference, compiled |' in table


class GraphBreak(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if x.sum() > 0 else x - 1  # data-dependent control flow: a graph break


def test_a_model_that_does_not_compile_in_one_graph_is_an_error():
    model = GraphBreak()
    benches = inference_benches('graph-break', model, model, 8, 8, compiled=True)
    measure_bench(benches[0], warmup=0, iters=1)
    with pytest.raises(RuntimeError, match=r'torch.compile\(fullgraph=True\) of graph-break failed at 8x8 fp32'):
        measure_bench(benches[1], warmup=0, iters=1)


def test_a_training_step_with_a_loss_that_is_not_finite_is_an_error():
    model = nn.Conv2d(3, 1, 1)
    bench = train_bench('nan', model, lambda x: model(x).mean() * float('nan'), 8, 8)
    with pytest.raises(FloatingPointError, match='nan: the loss of the first training step is nan'):
        measure_bench(bench, warmup=0, iters=1)


def test_training_steps_of_detector_and_segmentor_configs():
    main = benchmark_main()
    args = ['--train', '--warmup', '0', '--iters', '1', '--device', 'cpu']
    [det] = main([MASK_RCNN, '--shapes', '64', *args])
    # batch 2: UperNet's pyramid pooling normalises 1x1 maps, which BatchNorm cannot do for one image
    [seg] = main([UPERNET, '--shapes', '128', '--batch-size', '2', *args])
    [seg_cp] = main([UPERNET, '--shapes', '128', '--batch-size', '2', '--with-cp', *args])
    for row in (det, seg, seg_cp):
        assert row.mode == 'train' and 0 < row.latency_ms < float('inf')
        # parameters, AdamW's two moments and the gradients at least
        assert row.peak_memory_mib > row.params_m * 1e6 * 4 * 4 / 2**20
        assert 0 < row.step_memory_mib < row.peak_memory_mib
    assert det.model == 'mask-rcnn_paca-small_fpn_1x_coco' and seg_cp.with_cp and not seg.with_cp
    assert seg_cp.step_memory_mib < seg.step_memory_mib  # fewer backbone activations kept for backward
