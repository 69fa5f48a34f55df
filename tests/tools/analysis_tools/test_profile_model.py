"""tools/analysis_tools/profile_model.py: torch.profiler's operator table of one forward pass."""

import pytest
import torch

import mmcluster.models.layers.row_bands as row_bands
from tests.tools_helpers import load_tool


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_operator_table_of_a_backbone(capsys):
    table = load_tool('tools/analysis_tools/profile_model.py').main(
        ['paca-tiny', '--shape', '64x96', '--threads', '1', '--warmup', '1', '--top', '5', '--by-shape']
    )
    rows = table.splitlines()
    assert rows[0] == '| operator | input shapes | calls | self time (ms) | share |'
    assert len(rows) == 2 + 5 + 1 and rows[-1].startswith('| all operators |')
    operators = [row.split('|')[1].strip() for row in rows[2:-1]]
    # the linear layers dominate: oneDNN's matmul in fp32 CPU inference where it is the faster GEMM
    # (mmcluster.models.layers.linear), else BLAS addmm
    onednn = row_bands.ONEDNN_LINEAR is not None and row_bands.onednn_linear_is_faster()
    linear_op = '`mkldnn::_linear_pointwise`' if onednn else '`aten::addmm`'
    assert linear_op in operators
    shares = [float(row.split('|')[5].strip().rstrip('%')) for row in rows[2:-1]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    assert 'paca-tiny, 64x96, batch 1' in capsys.readouterr().out


def test_module_times(capsys):
    """--modules: the named stages' medians, each a share of the whole pass, together at most the pass."""
    tool = load_tool('tools/analysis_tools/profile_model.py')
    names = ['patch_embed', 'stages.0', 'stages.3']
    output = tool.main(
        ['paca-tiny', '--shape', '64x96', '--threads', '1', '--warmup', '0', '--modules', *names, '--passes', '2']
    )
    rows = output.split('\n\n')[1].splitlines()
    assert rows[0] == '| module | calls per pass | median (ms) | share of the pass |'
    assert [row.split('|')[1].strip() for row in rows[2:-1]] == [f'`{name}`' for name in names]
    assert all(row.split('|')[2].strip() == '1' for row in rows[2:-1])
    times = [float(row.split('|')[3]) for row in rows[2:]]
    assert all(t > 0 for t in times) and sum(times[:-1]) <= times[-1]


def test_bad_arguments(capsys):
    tool = load_tool('tools/analysis_tools/profile_model.py')
    for argv, message in (
        (['nope'], "unknown model 'nope'"),
        (['paca-tiny', '--top', '0'], '--top must be >= 1'),
        (['paca-tiny', '--modules', 'stages.0', 'stage.9'], "paca-tiny has no submodule 'stage.9'"),
    ):
        with pytest.raises(SystemExit):
            tool.main(argv)
        assert message in capsys.readouterr().err
