"""pyproject.toml against requirements/pins.txt, the lint setup, and the license."""

import re
import subprocess
import sys

import tomllib
import yaml
from packaging.requirements import Requirement

from tests.tools_helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())
PINS = (ROOT / 'requirements' / 'pins.txt').read_text()
# the files of this part of the project (packaging, configs, metadata tooling), kept lint-clean by this test;
# `make lint` checks the whole tree
OWN_PYTHON = ['setup.py', 'configs', 'mmcluster/utils/mim.py', 'tools/check_env.py', 'tools/misc', 'tests/packaging']
OWN_MARKDOWN = ['README.md', 'docs/model_zoo.md', 'docs/reproduction.md', 'configs/paca_vit/README.md']  # python blocks
OWN_OTHER = [
    'pyproject.toml',
    'model-index.yml',
    'Makefile',
    '.pre-commit-config.yaml',
    'MANIFEST.in',
    'requirements',
    'tools/setup_env.sh',
    'LICENSE',
]


def pinned() -> dict:
    """name -> exact version of the `==` lines of pins.txt."""
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'^([A-Za-z0-9_.\-]+)==([^\s#]+)', PINS, re.M)}


def test_dependencies_are_ranges_that_the_pins_satisfy():
    project = PYPROJECT['project']
    requirements = [Requirement(r) for r in project['dependencies']]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in project['optional-dependencies'].items()}
    names = {r.name for r in requirements}
    assert {'torch', 'torchvision', 'mmengine', 'timm', 'einops'} <= names
    assert 'mmcv' not in names and not any(r.name == 'mmcv' for reqs in extras.values() for r in reqs)
    assert {r.name for r in extras['det']} == {'mmdet'} and 'mmsegmentation' in {r.name for r in extras['seg']}
    assert {'pytest', 'ruff', 'codespell'} <= {r.name for r in extras['tests']}
    versions = pinned()
    for requirement in requirements + extras['det'] + extras['seg']:
        assert not any(s.operator == '==' for s in requirement.specifier), f'{requirement}: a range, not a pin'
        if requirement.name in versions:
            assert requirement.specifier.contains(versions[requirement.name]), (
                f'pins.txt has {requirement.name}=={versions[requirement.name]}, outside {requirement}'
            )
    # The floor is the oldest torch the code runs on: torch._dynamo.config.recompile_limit (benchmark.py) is 2.7.
    torch_range = Requirement(next(r for r in project['dependencies'] if r.startswith('torch>'))).specifier
    assert torch_range.contains('2.7') and not torch_range.contains('2.6.0'), torch_range


def test_pins_keep_the_lint_tools_and_setuptools_below_82():
    versions = pinned()
    assert {'ruff', 'codespell', 'torch', 'mmengine', 'mmdet', 'mmsegmentation'} <= set(versions)
    assert re.search(r'^ruff==\S+ # test', PINS, re.M) and re.search(r'^codespell==\S+ # test', PINS, re.M)
    assert re.search(r'^setuptools<82$', PINS, re.M)
    assert any(r.startswith('setuptools') and '<82' in r for r in PYPROJECT['build-system']['requires'])
    # pre-commit runs the pinned versions
    hooks = yaml.safe_load((ROOT / '.pre-commit-config.yaml').read_text())['repos']
    revs = {repo['repo'].rsplit('/', 1)[-1]: repo['rev'] for repo in hooks}
    assert revs == {'ruff-pre-commit': f'v{versions["ruff"]}', 'codespell': f'v{versions["codespell"]}'}


def test_setup_env_stamp_covers_the_build_files():
    script = (ROOT / 'tools' / 'setup_env.sh').read_text()
    stamp = re.search(r'stamp_key\(\) \{(.*?)\n\}', script, re.S).group(1)
    for name in ('$PINS', 'pyproject.toml', 'setup.py', 'tools/check_env.py', 'tools/setup_env.sh'):
        assert name in stamp, name
    assert '--no-build-isolation -e "$ROOT"' in script


def test_make_test_runs_the_lint_first():
    makefile = (ROOT / 'Makefile').read_text()
    assert re.search(r'^test: lint$', makefile, re.M)
    # the suite runs in pytest-xdist workers, pinned like the other test tools
    assert re.search(r'^\t\$\(VENV_BIN\)/python -m pytest tests .*-n \$\(TEST_WORKERS\)', makefile, re.M)
    assert re.search(r'^TEST_WORKERS \?= \d+$', makefile, re.M) and re.search(r'^pytest-xdist==\S+ # test', PINS, re.M)
    lint = re.search(r'^lint:.*\n((?:\t.*\n)+)', makefile, re.M).group(1)
    assert 'ruff check .' in lint and 'ruff format --check .' in lint and 'codespell' in lint
    ruff = PYPROJECT['tool']['ruff']
    assert ruff['line-length'] == 120 and {'E', 'F', 'W', 'I'} <= set(ruff['lint']['select'])
    assert ruff['format']['quote-style'] == 'single' and 'codespell' in PYPROJECT['tool']


def test_own_files_are_lint_clean():
    for args in (
        ['-m', 'ruff', 'check', *OWN_PYTHON],
        ['-m', 'ruff', 'format', '--check', *OWN_PYTHON, *OWN_MARKDOWN],
        ['-m', 'codespell_lib', *OWN_PYTHON, *OWN_MARKDOWN, *OWN_OTHER],
    ):
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f'{" ".join(args)}:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}'


def test_lint_finds_problems(tmp_path):
    """The lint setup does fail: an unsorted import, a double-quoted string, a misspelling."""
    bad = tmp_path / 'bad.py'
    misspelt = 'rec' + 'ieved'  # not written out, or codespell flags this file
    bad.write_text(f'import sys\nimport os\n\nprint("the {misspelt} value", os, sys)\n')
    config = ['--config', str(ROOT / 'pyproject.toml')]
    check = subprocess.run([sys.executable, '-m', 'ruff', 'check', *config, str(bad)], capture_output=True, text=True)
    assert check.returncode == 1 and 'I001' in check.stdout
    fmt = subprocess.run(
        [sys.executable, '-m', 'ruff', 'format', '--check', *config, str(bad)], capture_output=True, text=True
    )
    assert fmt.returncode == 1
    spell = subprocess.run(
        [sys.executable, '-m', 'codespell_lib', '--toml', str(ROOT / 'pyproject.toml'), str(bad)],
        capture_output=True,
        text=True,
    )
    assert spell.returncode != 0 and misspelt in spell.stdout


def test_license_is_apache_2():
    text = (ROOT / 'LICENSE').read_text()
    assert text.split()[:4] == ['Apache', 'License', 'Version', '2.0,']
    assert 'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION' in text
    assert 'END OF TERMS AND CONDITIONS' in text and len(text.splitlines()) > 190
    assert PYPROJECT['project']['license'] == 'Apache-2.0' and PYPROJECT['project']['license-files'] == ['LICENSE']
