"""The timm classifiers are plain torch modules: with mmcv, mmengine, mmdet and mmseg made unimportable,
`import timm; import mmcluster` registers them, they build, run, and load an official checkpoint file."""

import subprocess
import sys
import textwrap

import torch

from tests.official_layout import official_backbone_shapes, random_state_dict

BLOCK_OPENMMLAB = textwrap.dedent("""
    import sys
    for name in ('mmcv', 'mmengine', 'mmdet', 'mmseg'):
        sys.modules[name] = None  # as if not installed: `import` raises ImportError, find_spec returns None
""")


def run_without_openmmlab(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, '-c', BLOCK_OPENMMLAB + textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_timm_models_work_without_the_openmmlab_stack(tmp_path):
    official = tmp_path / 'official_tiny.pth'
    state = random_state_dict(official_backbone_shapes('tiny'))
    torch.save({'model': state, 'epoch': 299}, official)
    out = run_without_openmmlab(f"""
        import timm, torch
        import mmcluster
        assert not [m for m in sys.modules if m.split('.')[0] in ('mmcv', 'mmengine', 'mmdet', 'mmseg')
                    and sys.modules[m] is not None]
        assert 'paca_small' in timm.list_models('paca_*')
        model = timm.create_model('paca_small').eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        feats = timm.create_model('paca_tiny', features_only=True)(torch.randn(1, 3, 64, 64))
        assert [f.shape[1] for f in feats] == [96, 192, 320, 384]
        loaded = timm.create_model('paca_tiny', pretrained=True,
                                   pretrained_cfg_overlay=dict(file={str(official)!r}))
        ref = torch.load({str(official)!r}, weights_only=True)['model']
        assert torch.equal(loaded.stages[0].blocks[0].attn.q.weight, ref['stage1.0.attn.q.weight'])
        assert torch.equal(loaded.head.weight, ref['head.weight'])
        print('ok')
    """)
    assert out.strip().endswith('ok')
