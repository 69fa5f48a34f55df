"""ImageNet via timm: the recipe file (official classification/configs/imagenet_vit_adamw.yml), the launcher
for timm's own scripts, timm's create_model call."""

import pytest
import timm
import torch
import yaml

from tests.tools_helpers import ROOT, run

RECIPE = ROOT / 'configs/paca_vit/imagenet/paca-vit_8xb128-300e_in1k.yaml'


def create_as_train_py(name: str):
    """``timm.create_model`` with the arguments timm's train.py passes (None values are dropped by timm)."""
    return timm.create_model(
        name,
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
    model = create_as_train_py('paca_small')
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


# SecViT (spec §4: the official classfication_release/main.py defaults and run.sh)

SECVIT_RECIPE = ROOT / 'configs/secvit/imagenet/secvit_16xb128-300e_in1k.yaml'
SECVIT_GPUS = 16  # run.sh: 128 per GPU; the logs' peak lr 2e-3 = 5e-4 x 2048 / 512
# The arguments of timm's train.py (pytorch-image-models v1.0.x, argparse dests; timm's scripts are not in its
# wheel). train.py applies a --config file with parser.set_defaults(**yaml), which accepts any key: a key that
# is not an argument (a typo) would be ignored without a word.
TIMM_TRAIN_ARGS = {
    # dataset
    'data', 'data_dir', 'dataset', 'train_split', 'val_split', 'dataset_download', 'class_map',
    # model
    'model', 'pretrained', 'initial_checkpoint', 'resume', 'no_resume_opt', 'num_classes', 'gp', 'img_size',
    'in_chans', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation', 'batch_size', 'validation_batch_size',
    'channels_last', 'fuser', 'grad_accum_steps', 'grad_checkpointing', 'fast_norm', 'model_kwargs',
    'head_init_scale', 'head_init_bias', 'torchscript', 'torchcompile',
    # optimizer
    'opt', 'opt_eps', 'opt_betas', 'momentum', 'weight_decay', 'clip_grad', 'clip_mode', 'layer_decay', 'opt_kwargs',
    # learning-rate schedule
    'sched', 'sched_on_updates', 'lr', 'lr_base', 'lr_base_size', 'lr_base_scale', 'lr_noise', 'lr_noise_pct',
    'lr_noise_std', 'lr_cycle_mul', 'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'warmup_lr', 'min_lr',
    'epochs', 'epoch_repeats', 'start_epoch', 'decay_milestones', 'decay_epochs', 'warmup_epochs', 'warmup_prefix',
    'cooldown_epochs', 'patience_epochs', 'decay_rate',
    # augmentation and regularisation
    'no_aug', 'scale', 'ratio', 'hflip', 'vflip', 'color_jitter', 'aa', 'aug_repeats', 'aug_splits', 'jsd_loss',
    'bce_loss', 'bce_target_thresh', 'reprob', 'remode', 'recount', 'resplit', 'mixup', 'cutmix', 'cutmix_minmax',
    'mixup_prob', 'mixup_switch_prob', 'mixup_mode', 'mixup_off_epoch', 'smoothing', 'train_interpolation', 'drop',
    'drop_connect', 'drop_path', 'drop_block',
    # batch norm, EMA
    'bn_momentum', 'bn_eps', 'sync_bn', 'dist_bn', 'split_bn', 'model_ema', 'model_ema_force_cpu', 'model_ema_decay',
    # misc
    'seed', 'worker_seeding', 'log_interval', 'recovery_interval', 'checkpoint_hist', 'workers', 'save_images',
    'amp', 'amp_dtype', 'amp_impl', 'no_ddp_bb', 'synchronize_step', 'pin_mem', 'no_prefetcher', 'output',
    'experiment', 'eval_metric', 'tta', 'local_rank', 'use_multi_epochs_loader', 'log_wandb',
}  # fmt: skip


@pytest.mark.parametrize('recipe', [RECIPE, SECVIT_RECIPE], ids=['paca_vit', 'secvit'])
def test_recipes_use_only_timm_train_py_arguments(recipe):
    assert set(yaml.safe_load(recipe.read_text())) <= TIMM_TRAIN_ARGS


def test_secvit_recipe_matches_spec_section_4():
    r = yaml.safe_load(SECVIT_RECIPE.read_text())
    assert (r['batch_size'], r['epochs'], r['img_size'], r['num_classes']) == (128, 300, 224, 1000)
    assert (r['opt'], r['opt_eps'], r['opt_betas'], r['weight_decay']) == ('adamw', 1e-8, [0.9, 0.999], 0.05)
    # lr 5e-4 per 512 images, linear (timm's default for adamw would be sqrt): 2e-3 at 16 x 128
    assert r['lr_base'] * (SECVIT_GPUS * r['batch_size']) / r['lr_base_size'] == pytest.approx(2e-3)
    assert r['lr_base_scale'] == 'linear' and 'lr' not in r
    assert (r['sched'], r['warmup_epochs'], r['cooldown_epochs'], r['sched_on_updates']) == ('cosine', 5, 0, False)
    assert (r['warmup_lr'], r['min_lr'], r['warmup_prefix']) == (1e-6, 1e-5, False)
    assert r['aa'] == 'rand-m9-mstd0.5-inc1' and r['train_interpolation'] == 'bicubic'
    assert (r['scale'], r['ratio'], r['hflip']) == ([0.08, 1.0], [0.75, pytest.approx(4 / 3)], 0.5)
    assert (r['reprob'], r['remode'], r['recount'], r['smoothing']) == (0.25, 'pixel', 1, 0.1)
    assert (r['mixup'], r['cutmix'], r['mixup_prob'], r['mixup_switch_prob'], r['mixup_mode']) == (
        0.8,
        1.0,
        1.0,
        0.5,
        'batch',
    )
    assert r['aug_repeats'] == 3  # main.py's RASampler
    assert r['model_ema'] is True
    assert r['model_ema_decay'] == pytest.approx(0.99996 ** (SECVIT_GPUS * r['batch_size'] / 512), rel=1e-10)
    # evaluation: short side 256 (bicubic), centre crop 224
    assert r['crop_pct'] == 0.875 and round(224 / r['crop_pct']) == 256 and r['interpolation'] == 'bicubic'
    assert r['amp'] is True and r['sync_bn'] is True and r['drop'] == 0.0
    # drop path from the model defaults; no gradient clipping, no layer-wise lr decay
    assert not {'drop_path', 'clip_grad', 'layer_decay', 'lr'} & set(r)


def _timm_args(recipe: dict, world_size: int):
    """The recipe as train.py's args: its lr from lr_base for ``world_size`` GPUs, momentum at its default."""
    from types import SimpleNamespace

    assert recipe['lr_base_scale'] == 'linear'
    lr = recipe['lr_base'] * recipe['batch_size'] * world_size / recipe['lr_base_size']
    return SimpleNamespace(**recipe, lr=lr, momentum=0.9)


def test_secvit_recipe_as_timm_builds_optimizer_and_schedule():
    """The optimizer and schedule that timm's factories (train.py's calls) make of the recipe, on SecViT-B
    (the variant with layer scale)."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    args = _timm_args(yaml.safe_load(SECVIT_RECIPE.read_text()), SECVIT_GPUS)
    model = timm.create_model('secvit_base')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    assert type(optimizer).__name__ == 'AdamW'
    decay = {name: group['weight_decay'] for group in optimizer.param_groups for name in _names(model, group)}
    assert set(decay) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        # spec §4: 1-d parameters and biases undecayed; layer scale (4-d gamma) decayed, as in the official code
        expected = 0.0 if param.ndim <= 1 or name.endswith('.bias') else 0.05
        assert decay[name] == expected, name
    assert any('gamma_1' in n for n in decay) and all(decay[n] == 0.05 for n in decay if '.gamma_' in n)
    group = optimizer.param_groups[0]
    assert (group['lr'], group['betas'], group['eps']) == (pytest.approx(2e-3), (0.9, 0.999), 1e-8)

    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=625)
    assert num_epochs == 300
    lrs = []
    for epoch in range(num_epochs):  # train.py: the lr of epoch 0 at creation, step(epoch + 1) after each epoch
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs[0] == pytest.approx(1e-6)  # warm-up from 1e-6 ...
    assert lrs[1] == pytest.approx(1e-6 + (2e-3 - 1e-6) / 5)  # linear (the official epoch 1 stayed at 1e-6)
    assert max(lrs) == lrs[5] == pytest.approx(2e-3, rel=1e-3)  # ... to 2e-3, then cosine ...
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))
    assert 1e-5 < lrs[-1] < 1.01e-5  # ... down to the min lr 1e-5


def _names(model, group):
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in group['params']]


@pytest.mark.parametrize(
    'name,drop_path', [('secvit_tiny', 0.1), ('secvit_small', 0.15), ('secvit_base', 0.4), ('secvit_large', 0.5)]
)
def test_secvit_models_accept_what_timm_train_py_passes(name, drop_path):
    """timm's train.py calls create_model with these (no --drop-path in the recipe: the variant's own rate,
    the official runs' hard-coded one, reaches the last block)."""
    model = create_as_train_py(name)
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(drop_path)
    assert model.stages[0].blocks[0].drop_path.__class__.__name__ == 'Identity'  # 0 at the first block
    r = yaml.safe_load(SECVIT_RECIPE.read_text())
    data = timm.data.resolve_data_config({k: r[k] for k in ('crop_pct', 'interpolation', 'img_size')}, model=model)
    assert data['crop_pct'] == 0.875 and data['interpolation'] == 'bicubic' and data['input_size'] == (3, 224, 224)
    assert data == timm.data.resolve_data_config({}, model=model)  # the recipe restates the model's defaults
    if name == 'secvit_tiny':
        model.set_grad_checkpointing(True)  # --grad-checkpointing
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_timm_script_launcher_builds_secvit(tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(
        'import sys, timm, yaml\n'
        'recipe = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))\n'
        'model = timm.create_model(sys.argv[sys.argv.index("--model") + 1], drop_path_rate=recipe.get("drop_path"))\n'
        'print("built", type(model).__name__, model.stages[-1].blocks[-1].drop_path.drop_prob)\n'
    )
    out = run(['tools/imagenet/timm_script.py', script, '--model', 'secvit_small', '--config', SECVIT_RECIPE])
    assert 'built SecViTClassifier 0.15' in out
