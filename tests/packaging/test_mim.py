"""`_base_ = ['mmcluster::...']` in a user's config, with the editable install and with `pip install .`."""

import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from mmengine.config import Config

from mmcluster.utils import mim
from tests.packaging.helpers import copy_sources, pip_install_target, python_outside_repo
from tests.tools_helpers import ROOT

DET = 'paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py'
SEG = 'paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py'

# Run in a fresh interpreter outside the repository: a user's config inheriting DET through `mmcluster::`
# loads after `import mmcluster`, and merges to exactly what the same file inherited by path gives.
USER_SCRIPT = """
import json, os, sys
import mmcluster
from mmcluster.utils.mim import register_mim_package
register_mim_package()  # until mmcluster/__init__.py calls it on import
from mmengine.config import Config
from mmengine.config.utils import _get_cfg_metainfo
with open('my_config.py', 'w') as f:
    f.write("_base_ = ['mmcluster::{det}']\\nmodel = dict(neck=dict(out_channels=128))\\n")
cfg = Config.fromfile('my_config.py')
ref = Config.fromfile(os.path.join({configs!r}, '{det}'))
ref.model.neck.out_channels = 128
print(json.dumps(dict(
    module=mmcluster.__file__, sys_path=[os.path.abspath(p) for p in sys.path], same=cfg.to_dict() == ref.to_dict(),
    backbone=cfg.model.backbone.type, out_channels=cfg.model.neck.out_channels,
    mim=mmcluster.utils.mim.mim_dir(), metainfo=_get_cfg_metainfo(mmcluster.utils.mim.PACKAGE_DIR, '{det}')['Name'])))
"""


@pytest.fixture(scope='module', autouse=True)
def registered():
    mim.register_mim_package()


def test_editable_install_resolves_mmcluster_base(tmp_path):
    """The .venv of tools/setup_env.sh: an editable install whose .mim links to the checkout's configs."""
    out = python_outside_repo(USER_SCRIPT.format(det=DET, configs=str(ROOT / 'configs')), cwd=tmp_path)
    assert Path(out['module']).resolve() == (ROOT / 'mmcluster' / '__init__.py').resolve(), (
        'the environment running the tests should have mmcluster installed editable (tools/setup_env.sh)'
    )
    assert not any(Path(p).resolve() == ROOT for p in out['sys_path'])
    assert out['same'] and out['backbone'] == 'PaCaViT' and out['out_channels'] == 128
    assert out['metainfo'] == 'mask-rcnn_paca-tiny_fpn_1x_coco'
    # the links the editable install made: edits to configs/ are seen without reinstalling
    mim_dir = Path(out['mim'])
    assert (mim_dir / 'configs').resolve() == (ROOT / 'configs').resolve()
    assert (mim_dir / 'model-index.yml').resolve() == (ROOT / 'model-index.yml').resolve()


def test_pip_install_resolves_mmcluster_base(tmp_path):
    """A regular (non-editable) install: configs and model-index.yml are copied into mmcluster/.mim."""
    src, site, user = copy_sources(tmp_path / 'src'), tmp_path / 'site', tmp_path / 'user'
    user.mkdir()
    pip_install_target(src, site)

    mim_dir = site / 'mmcluster' / '.mim'
    assert not (mim_dir / 'configs').is_symlink() and (mim_dir / 'model-index.yml').is_file()
    shipped = {p.relative_to(mim_dir / 'configs') for p in (mim_dir / 'configs').rglob('*') if p.is_file()}
    ours = {
        p.relative_to(ROOT / 'configs')
        for p in (ROOT / 'configs').rglob('*')
        if p.is_file() and '__pycache__' not in p.parts
    }
    assert shipped == ours
    assert all((mim_dir / 'configs' / p).read_bytes() == (ROOT / 'configs' / p).read_bytes() for p in ours)

    metadata = next(site.glob('mmcluster-*.dist-info')).joinpath('METADATA').read_text()
    requires = [
        line.split(':', 1)[1].split(';')[0].strip()
        for line in metadata.splitlines()
        if line.startswith('Requires-Dist:')
    ]
    assert 'torch>=2.7' in requires and not any('==' in r or r.startswith('mmcv') for r in requires), requires
    assert 'License-Expression: Apache-2.0' in metadata

    out = python_outside_repo(
        USER_SCRIPT.format(det=DET, configs=str(ROOT / 'configs')), cwd=user, pythonpath=str(site)
    )
    assert Path(out['module']).resolve() == (site / 'mmcluster' / '__init__.py').resolve()
    assert not any(Path(p).resolve() == ROOT for p in out['sys_path'])
    assert Path(out['mim']).resolve() == mim_dir.resolve()
    assert out['same'] and out['backbone'] == 'PaCaViT' and out['out_channels'] == 128
    assert out['metainfo'] == 'mask-rcnn_paca-tiny_fpn_1x_coco'


def test_sdist_carries_what_the_wheel_needs(tmp_path):
    """sdist -> wheel (what `pip install mmcluster` from an index does): MANIFEST.in includes configs/ and
    model-index.yml, and the wheel built from the sdist has mmcluster/.mim."""
    src = copy_sources(tmp_path / 'src')
    out = python_outside_repo(
        'import json, setuptools.build_meta as b; print(json.dumps(b.build_sdist("dist")))', cwd=src
    )
    with tarfile.open(src / 'dist' / out) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
        tar.extractall(tmp_path / 'sdist', filter='data')
    for needed in (
        'model-index.yml',
        'LICENSE',
        'requirements/pins.txt',
        'configs/paca_vit/metafile.yml',
        'configs/_base_/schedules/adamw-poly-160k.py',
        'setup.py',
        'pyproject.toml',
    ):
        assert needed in names, needed
    assert not any('.mim' in n or '__pycache__' in n for n in names)

    (sdist_root,) = (tmp_path / 'sdist').iterdir()
    wheel = python_outside_repo(
        f'import json, setuptools.build_meta as b; print(json.dumps(b.build_wheel({str(tmp_path / "wheels")!r})))',
        cwd=sdist_root,
    )
    with zipfile.ZipFile(tmp_path / 'wheels' / wheel) as zf:
        names = set(zf.namelist())
    assert f'mmcluster/.mim/configs/{DET}' in names and 'mmcluster/.mim/model-index.yml' in names
    assert 'mmcluster/.mim/configs/paca_vit/metafile.yml' in names


def test_mmcluster_base_loads_like_a_path_base_without_a_scope(tmp_path, monkeypatch):
    """mmengine would give the typed top-level dicts of a `pkg::` base `_scope_='pkg'`; mmcluster has no
    registry of its own, so the PaCa-head recipe (whose EncoderDecoder model is defined in our files) would
    not build. An `mmcluster::` base must merge exactly as the same file inherited by path."""
    from tests.packaging.helpers import cache_metafile_reads

    cache_metafile_reads(monkeypatch)
    user = tmp_path / 'my_config.py'
    user.write_text(f"_base_ = ['mmcluster::{SEG}']\n")
    cfg = Config.fromfile(str(user))
    assert cfg.to_dict() == Config.fromfile(str(ROOT / 'configs' / SEG)).to_dict()
    assert '"_scope_": "mmcluster"' not in json.dumps(cfg.to_dict())
    assert '_scope_' not in cfg.model and cfg.model.type == 'EncoderDecoder'

    path, scope = Config._get_cfg_path(f'mmcluster::{SEG}', str(user))
    assert scope is None and Path(path).resolve() == (ROOT / 'configs' / SEG).resolve()
    path, scope = Config._get_cfg_path('mmdet::_base_/default_runtime.py', str(user))
    assert scope == 'mmdet' and path.endswith('mmdet/.mim/configs/_base_/default_runtime.py')


def test_register_is_idempotent_and_leaves_other_packages_alone():
    import mmengine.config.config as config_module
    import mmengine.utils
    from mmengine.config.utils import MODULE2PACKAGE

    mim.register_mim_package()
    mim.register_mim_package()
    assert mim.is_registered() and MODULE2PACKAGE['mmcluster'] == 'mmcluster'
    for function in (config_module.get_installed_path, Config._get_cfg_path):
        original = getattr(function, '__mmcluster_original__')
        assert not hasattr(original, '__mmcluster_original__')  # wrapped once
    assert config_module.get_installed_path('mmcluster') == mim.PACKAGE_DIR
    assert mmengine.utils.get_installed_path('mmcluster') == mim.PACKAGE_DIR
    import mmdet

    assert Path(config_module.get_installed_path('mmdet')).resolve() == Path(mmdet.__file__).parent.resolve()


def test_missing_mim_dir_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setattr(mim, 'PACKAGE_DIR', str(tmp_path / 'mmcluster'))
    user = tmp_path / 'my_config.py'
    user.write_text(f"_base_ = ['mmcluster::{DET}']\n")
    with pytest.raises(FileNotFoundError, match='reinstall mmcluster'):
        Config.fromfile(str(user))
