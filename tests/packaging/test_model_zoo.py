"""OpenMMLab metadata: model-index.yml, the metafiles, and what tools/misc/gen_model_zoo.py makes of them."""

import shutil

import pytest
import yaml

from tests.tools_helpers import ROOT, load_tool

gen = load_tool('tools/misc/gen_model_zoo.py')

CONFIG_SUFFIXES = ('.py', '.yaml', '.yml')


def config_files(family_dir):
    return {
        p.relative_to(ROOT).as_posix()
        for p in family_dir.rglob('*')
        if p.suffix in CONFIG_SUFFIXES and p.name != 'metafile.yml' and '__pycache__' not in p.parts
    }


def test_committed_outputs_equal_the_tools_output():
    expected = gen.render_all(ROOT)
    assert set(expected) == {
        'docs/model_zoo.md',
        'configs/paca_vit/README.md',
        'configs/secvit/README.md',
        'configs/expedite/README.md',
    }
    for rel, text in expected.items():
        assert (ROOT / rel).read_text(encoding='utf-8') == text, (
            f'{rel} is out of date: run python tools/misc/gen_model_zoo.py'
        )


def test_model_index_imports_every_family():
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    metafiles = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'configs').glob('*/metafile.yml'))
    assert metafiles and sorted(index['Import']) == metafiles


@pytest.mark.parametrize('family', gen.load_families(ROOT), ids=lambda f: f.title)
def test_every_config_is_in_the_metafile_and_back(family):
    listed = {m['Config'] for m in family.models}
    on_disk = config_files((ROOT / family.metafile).parent)
    assert on_disk - listed == set(), 'configs missing from the metafile'
    assert listed - on_disk == set(), 'metafile entries without a config'
    assert gen.check_metafile(family, ROOT) == []


def test_metafile_fields():
    """What mmengine and the tables rely on: every model has a Config, a collection, results with numbers."""
    (family,) = [f for f in gen.load_families(ROOT) if f.metafile == 'configs/paca_vit/metafile.yml']
    by_name = {m['Name']: m for m in family.models}
    assert len(by_name) == len(family.models) == 58
    for model in family.models:
        assert model['Config'].startswith('configs/paca_vit/') and model['Metadata']['Training Data']
        for result in model.get('Results', []):
            assert (
                result['Task']
                and result['Dataset']
                and all(isinstance(v, (int, float)) for v in result['Metrics'].values())
            )
        if 'Weights' in model:
            assert model['Weights'].startswith('https://github.com/iVMCL/PaCaViT/releases/download/pacavit/')
    # an AMP copy carries the metrics and checkpoint of the config it copies
    for model in family.models:
        base = model['Metadata'].get('Variant of')
        if base:
            assert model.get('Results') == by_name[base].get('Results')
            assert model.get('Weights') == by_name[base].get('Weights')
    tiny = by_name['mask-rcnn_paca-tiny_fpn_1x_coco']
    assert gen.metrics_of(tiny) == {'box AP': 43.3, 'mask AP': 39.6}
    assert tiny['Metadata']['Parameters (M)'] == 31.97


def test_model_zoo_keeps_the_numbers():
    text = (ROOT / 'docs' / 'model_zoo.md').read_text()
    # a row of each table, footnote markers in place, every note
    assert '| PaCa-Base (teacher) | `paca_base_teacher` | 84.22 | 46.7¹ / 9.7 | 47,659,192 | 9.77 |' in text
    assert (
        '| Small [100,81,64,49] | [`paca-head_paca-small-m100-81-64-49_8xb2-160k_ade20k-512x512`]'
        '(../configs/paca_vit/paca-head_paca-small-m100-81-64-49_8xb2-160k_ade20k-512x512.py) | 47.6 | '
        '23.7³ / 47.3 | 23.41 | 47.0 |'
    ) in text
    assert '| 43.3 / 39.6 | 32.0 / 252 | 31.97 | 251.4 / 236.0 |' in text
    assert 'IMNET_224_pacavit_small_p2cconv_100.pth)⁵ |' in text
    assert (
        '[`fpn_paca-base_8xb2-80k_ade20k-512x512`](../configs/paca_vit/fpn_paca-base_8xb2-80k_ade20k-512x512.py)'
        ' | 50.77 | 74.4 |' in text
    )
    assert text.count('\n1. ') == 1 and '\n5. The README links this row' in text
    for amp in ('mask-rcnn_paca-base_fpn_amp-ms-crop-3x_coco', 'upernet_paca-small_8xb2-amp-160k_ade20k-512x512'):
        assert f'[`{amp}`](../configs/paca_vit/{amp}.py)' in text


def test_check_mode_and_problems(tmp_path):
    for rel in ('model-index.yml', 'docs/model_zoo.md', 'configs'):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    root = str(tmp_path)
    assert gen.main(['--root', root, '--check']) == 0

    zoo = tmp_path / 'docs' / 'model_zoo.md'
    zoo.write_text(zoo.read_text().replace('43.3 / 39.6', '43.4 / 39.6'))
    assert gen.main(['--root', root, '--check']) == 1
    assert gen.main(['--root', root]) == 0 and '43.3 / 39.6' in zoo.read_text()

    (tmp_path / 'configs' / 'paca_vit' / 'mask-rcnn_paca-tiny_fpn_amp-1x_coco.py').unlink()
    (family,) = [f for f in gen.load_families(root) if f.metafile == 'configs/paca_vit/metafile.yml']
    assert gen.check_metafile(family, root) == [
        'configs/paca_vit/metafile.yml: mask-rcnn_paca-tiny_fpn_amp-1x_coco: config '
        "'configs/paca_vit/mask-rcnn_paca-tiny_fpn_amp-1x_coco.py' does not exist"
    ]
    assert gen.main(['--root', root, '--check']) == 1


def test_mmengine_finds_models_through_the_installed_model_index():
    """mmengine reads <package>/.mim/model-index.yml and the metafiles it imports for `mmcluster::` paths."""
    from mmengine.config.utils import _get_cfg_metainfo

    from mmcluster.utils.mim import PACKAGE_DIR

    meta = _get_cfg_metainfo(PACKAGE_DIR, 'paca_vit/upernet_paca-small_8xb2-160k_ade20k-512x512.py')
    assert meta['Results'][0]['Metrics']['mIoU'] == 47.6
