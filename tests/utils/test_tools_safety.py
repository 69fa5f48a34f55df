"""The tools as a user (or an attacker) runs them: a malicious checkpoint URL is refused by tools/train.py,
tools/test.py and visualize_clusters.py before its payload runs; tools/test.py and demo/image_demo.py stop
on a checkpoint that does not fit the config's model, and the demo on a file that is not an image."""

import os
import re
import subprocess
import sys

import pytest
import torch

from tests.tools_helpers import DET_DEMO, ROOT, SEG_DEMO, load_tool, run, shapes_options


def run_failing(args, env=None, timeout=300) -> str:
    """Run a tool that must fail; returns its output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg', **(env or {}))
    cmd = [sys.executable] + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f'{" ".join(cmd)} succeeded but should have failed:\n{output[-4000:]}'
    return output


def _build(config):
    from mmengine.registry import MODELS

    from mmcluster.apis import load_config

    return MODELS.build(load_config(config).model)


def test_train_refuses_a_malicious_pretrained_url(evil, torch_home, shapes_root):
    out = run_failing(
        [
            'tools/train.py',
            DET_DEMO,
            '--work-dir',
            torch_home.parent / 'train',
            '--cfg-options',
            *shapes_options(shapes_root, 'det'),
            'train_dataloader.dataset.indices=2',
            'model.backbone.init_cfg._delete_=True',
            'model.backbone.init_cfg.type=Pretrained',
            f'model.backbone.init_cfg.checkpoint={evil.url}',
        ],
        env={'TORCH_HOME': str(torch_home)},
    )
    assert 'UnsafeCheckpointError' in out and 'builtins.exec' in out and 'refuses to unpickle' in out
    assert not evil.marker.exists()
    assert evil.server.requests == ['/evil.pth']


def test_test_tool_and_heatmaps_refuse_a_malicious_checkpoint_url(evil, torch_home, shapes_root):
    env = {'TORCH_HOME': str(torch_home)}
    out = run_failing(
        [
            'tools/test.py',
            SEG_DEMO,
            evil.url,
            '--work-dir',
            torch_home.parent / 'test',
            '--cfg-options',
            *shapes_options(shapes_root, 'seg'),
        ],
        env=env,
    )
    assert re.search(r'error: .*evil\.pth .*builtins\.exec.*refuses to unpickle', out)
    assert 'metrics:' not in out and not evil.marker.exists()
    out = run_failing(
        [
            'tools/analysis_tools/visualize_clusters.py',
            DET_DEMO,
            shapes_root / 'coco/val/val_00000.jpg',
            '--checkpoint',
            evil.url,
            '--out-dir',
            torch_home.parent / 'vis',
        ],
        env=env,
    )
    assert 'UnsafeCheckpointError' in out and 'builtins.exec' in out
    assert not evil.marker.exists()
    assert evil.server.requests == ['/evil.pth']  # the second tool found it in the cache, and refused it too


def test_test_tool_stops_on_a_checkpoint_that_does_not_fit(shapes_root, tmp_path):
    state = _build(DET_DEMO).state_dict()
    state['roi_head.bbox_head.fc_cls.weight'] = torch.zeros(5, state['roi_head.bbox_head.fc_cls.weight'].shape[1])
    del state['neck.fpn_convs.0.conv.bias']
    state['roi_head.bbox_head.extra.weight'] = torch.zeros(1)
    path = tmp_path / 'wrong.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    out = run_failing(
        [
            'tools/test.py',
            DET_DEMO,
            path,
            '--work-dir',
            tmp_path / 'test',
            '--cfg-options',
            *shapes_options(shapes_root, 'det'),
        ]
    )
    assert f'error: {path} does not fit MaskRCNN' in out
    assert 'roi_head.bbox_head.fc_cls.weight (checkpoint (5, 256), model (4, 256))' in out
    assert 'missing in the checkpoint (1): neck.fpn_convs.0.conv.bias' in out
    assert 'unexpected in the checkpoint (1): roi_head.bbox_head.extra.weight' in out
    assert 'metrics:' not in out


def test_test_tool_evaluates_a_benign_checkpoint_over_http(server, torch_home, shapes_root):
    torch.save({'state_dict': _build(SEG_DEMO).state_dict(), 'meta': {}}, server.root / 'seg.pth')
    out = run(
        [
            'tools/test.py',
            SEG_DEMO,
            f'{server.url}/seg.pth',
            '--work-dir',
            torch_home.parent / 'test',
            '--cfg-options',
            *shapes_options(shapes_root, 'seg'),
            'test_dataloader.dataset.indices=2',
        ],
        env={'TORCH_HOME': str(torch_home)},
    )
    assert re.search(r'^metrics: .*mIoU', out, re.M)
    assert (torch_home / 'hub' / 'checkpoints' / 'seg.pth').is_file() and server.requests == ['/seg.pth']


def test_image_demo_stops_on_a_classifier_checkpoint_and_on_a_non_image(shapes_root, tmp_path):
    import timm

    classifier = tmp_path / 'paca_tiny_classifier.pth'
    torch.save(timm.create_model('paca_tiny').state_dict(), classifier)
    image = shapes_root / 'coco/val/val_00001.jpg'
    out = run_failing(['demo/image_demo.py', image, DET_DEMO, classifier, '--out-file', tmp_path / 'det.jpg'])
    assert f'error: {classifier} does not fit MaskRCNN: 0 of its' in out
    assert 'unexpected in the checkpoint' in out and 'missing in the checkpoint' in out
    assert not (tmp_path / 'det.jpg').exists()
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('this is not an image\n')
    out = run_failing(['demo/image_demo.py', not_image, DET_DEMO, classifier, '--out-file', tmp_path / 'det.jpg'])
    assert f'error: {not_image} is not an image' in out


def test_image_demo_names_a_missing_image(tmp_path):
    demo = load_tool('demo/image_demo.py')
    with pytest.raises(FileNotFoundError, match=f'image {tmp_path / "missing.jpg"} does not exist'):
        demo.main([str(tmp_path / 'missing.jpg'), DET_DEMO, 'unused.pth', '--out-file', str(tmp_path / 'x.jpg')])
