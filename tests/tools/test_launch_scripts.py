"""tools/dist_launch.sh and tools/slurm_launch.sh: which Python they use (PYTHON, the repository's .venv,
or `python` on the PATH), that they say so, and that they stop when it cannot import mmcluster.

Each test runs the scripts from a copy of tools/ in a temporary "repository", so that the presence of
.venv/ can be chosen."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = (
    'dist_launch.sh',
    'dist_train.sh',
    'dist_test.sh',
    'slurm_launch.sh',
    'slurm_train.sh',
    'slurm_test.sh',
    'launch_python.sh',
)
# A tool that shows how torchrun started it and where mmcluster came from.
ECHO_TOOL = """import os, sys
import mmcluster
print('ARGV', sys.argv[1:])
print('RANK', os.environ.get('RANK'), 'WORLD_SIZE', os.environ.get('WORLD_SIZE'))
print('PYTHONPATH', repr(os.environ.get('PYTHONPATH')))
print('MMCLUSTER', mmcluster.__file__)
"""


def fake_repo(tmp_path, venv_python=None):
    repo = tmp_path / 'repo'
    (repo / 'tools').mkdir(parents=True)
    for name in SCRIPTS:
        shutil.copy(ROOT / 'tools' / name, repo / 'tools' / name)
    (repo / 'tools' / 'echo_tool.py').write_text(ECHO_TOOL)
    if venv_python is not None:
        (repo / '.venv' / 'bin').mkdir(parents=True)
        write_executable(repo / '.venv' / 'bin' / 'python', f'#!/bin/sh\nexec {venv_python} "$@"\n')
    return repo


def write_executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


def python_without_mmcluster(directory):
    """An interpreter that cannot import mmcluster (nor torch): ours without site-packages or PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_executable(directory / 'python', f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')


def bash(args, env_update, unset=()):
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(env_update)
    return subprocess.run(['bash', *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def test_dist_launch_uses_the_repository_venv_and_says_so(tmp_path):
    repo = fake_repo(tmp_path, venv_python=sys.executable)
    proc = bash(
        [repo / 'tools' / 'dist_launch.sh', 'echo_tool.py', '1', '--flag'],
        {'PORT': '29633', 'OMP_NUM_THREADS': '1'},
        unset=('PYTHON',),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'dist_launch.sh: Python: ' in proc.stderr and "(the repository's .venv)" in proc.stderr
    assert 'with mmcluster' in proc.stderr
    assert "ARGV ['--flag', '--launcher', 'pytorch']" in proc.stdout and 'RANK 0 WORLD_SIZE 1' in proc.stdout
    # mmcluster is the installed package: the script did not put a repository on PYTHONPATH
    assert f'PYTHONPATH {os.environ.get("PYTHONPATH")!r}' in proc.stdout
    assert str(repo) not in proc.stdout.split('MMCLUSTER')[1]


def test_dist_launch_without_venv_names_the_python_from_the_path_and_stops(tmp_path):
    repo = fake_repo(tmp_path)  # no .venv
    bad = python_without_mmcluster(tmp_path / 'bin')
    proc = bash(
        [repo / 'tools' / 'dist_train.sh', 'some_config.py', '2'],
        {'PATH': f'{bad.parent}{os.pathsep}{os.environ["PATH"]}'},
        unset=('PYTHON',),
    )
    assert proc.returncode == 1
    assert "the Python interpreter 'python'" in proc.stderr and 'cannot import mmcluster' in proc.stderr
    assert f'no {repo}/.venv/bin/python' in proc.stderr and 'set PYTHON' in proc.stderr
    assert "No module named 'mmcluster'" in proc.stderr
    assert 'torch.distributed' not in proc.stderr and not proc.stdout  # torchrun never started


@pytest.mark.parametrize(
    'script, args',
    [
        ('dist_test.sh', ['config.py', 'ckpt.pth', '1']),
        ('slurm_train.sh', ['partition', 'job', 'config.py', 'work_dir']),
    ],
)
def test_launchers_stop_when_PYTHON_cannot_import_mmcluster(tmp_path, script, args):
    repo = fake_repo(tmp_path, venv_python=sys.executable)  # PYTHON wins over .venv
    bad = python_without_mmcluster(tmp_path / 'bin')
    proc = bash([repo / 'tools' / script, *args], {'PYTHON': str(bad)})
    assert proc.returncode == 1
    assert f"the Python interpreter '{bad}' (from $PYTHON) cannot import mmcluster" in proc.stderr
    assert 'PYTHON=/path/to/python' in proc.stderr
