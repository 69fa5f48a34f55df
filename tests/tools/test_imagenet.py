"""ImageNet via timm: the recipe file (official classification/configs/imagenet_vit_adamw.yml), the launcher
for timm's own scripts, timm's create_model call."""

import pytest
import timm
import torch
import yaml

from tests.tools_helpers import ROOT, run

RECIPE = ROOT / 'configs/paca_vit/imagenet/paca-vit_8xb128-300e_in1k.yaml'


def test_recipe_matches_the_official_training():
    r = yaml.safe_load(RECIPE.read_text())
    assert (r['batch_size'], r['epochs'], r['img_size']) == (128, 300, 224)  # 8 GPUs x 128
    assert (r['opt'], r['opt_eps'], r['opt_betas'], r['weight_decay']) == ('adamw', 1e-8, [0.9, 0.999], 0.05)
    # lr 5e-4 per 512 images, linear: 1e-3 at 8 x 128
    assert r['lr_base'] * (8 * r['batch_size']) / r['lr_base_size'] == pytest.approx(1e-3)
    assert r['lr_base_scale'] == 'linear'
    assert (r['sched'], r['warmup_epochs'], r['cooldown_epochs'], r['sched_on_updates']) == ('cosine', 5, 0, False)
    assert (r['warmup_lr'], r['min_lr']) == (1e-6, 1e-5)
    assert r['aa'] == 'rand-m9-mstd0.5-inc1' and r['train_interpolation'] == 'bicubic'
    assert (r['reprob'], r['remode'], r['recount'], r['smoothing']) == (0.25, 'pixel', 1, 0.1)
    assert (r['mixup'], r['cutmix'], r['mixup_prob'], r['mixup_switch_prob'], r['mixup_mode']) == (
        0.8,
        1.0,
        1.0,
        0.5,
        'batch',
    )
    assert r['amp'] is True and 'clip_grad' not in r and 'model_ema' not in r and 'drop_path' not in r


def test_models_accept_what_timm_train_py_passes():
    """timm's train.py calls create_model with these; None values are dropped by timm."""
    model = timm.create_model(
        'paca_small',
        pretrained=False,
        in_chans=3,
        num_classes=1000,
        drop_rate=0.0,
        drop_path_rate=None,
        drop_block_rate=None,
        global_pool=None,
        bn_momentum=None,
        bn_eps=None,
        scriptable=False,
        checkpoint_path='',
    )
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)  # the model's default
    data = timm.data.resolve_data_config({}, model=model)
    assert data['crop_pct'] == 0.9 and data['interpolation'] == 'bicubic' and data['input_size'] == (3, 224, 224)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_timm_script_launcher_registers_models_and_passes_arguments(tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(
        'import sys, timm\n'
        'assert __name__ == "__main__"\n'
        'model = timm.create_model(sys.argv[sys.argv.index("--model") + 1])\n'
        'print("built", type(model).__name__, sys.argv[1:])\n'
    )
    out = run(['tools/imagenet/timm_script.py', script, '--model', 'paca_tiny', '--config', RECIPE])
    assert f"built PaCaViTClassifier ['--model', 'paca_tiny', '--config', '{RECIPE}']" in out


def test_timm_script_launcher_explains_a_missing_script(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, 'tools/imagenet/timm_script.py', str(tmp_path / 'nope.py')],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and 'pytorch-image-models' in proc.stderr
