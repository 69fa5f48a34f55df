"""Checkpoints from every location load with weights_only=True: a malicious file served over http (and
through every mmengine scheme, and from the download cache) is refused before its payload runs; benign
files still load."""

import json
import os
import pickle
import urllib.error

import pytest
import torch
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from mmcluster.models.backbones.paca_vit import PaCaViT
from mmcluster.utils.checkpoint import (
    CheckpointDownloadError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    load_pretrained,
)
from tests.tools_helpers import ROOT

from .conftest import init_from, save_malicious


def test_the_payload_is_real(tmp_path):
    """Control: unpickled without the allow-list, the malicious file does run its payload."""
    marker = tmp_path / 'control_marker'
    save_malicious(tmp_path / 'control.pth', marker)
    torch.load(tmp_path / 'control.pth', weights_only=False)
    assert marker.exists()


def test_http_init_cfg_refuses_a_malicious_checkpoint(evil, torch_home):
    model = PaCaViT(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=evil.url))
    with pytest.raises(pickle.UnpicklingError) as info:
        model.init_weights()
    assert isinstance(info.value, UnsafeCheckpointError)
    assert 'builtins.exec' in str(info.value) and 'refuses to unpickle' in str(info.value)
    assert evil.url in str(info.value)
    assert not evil.marker.exists()
    assert evil.server.requests == ['/evil.pth']


def test_a_second_load_from_the_cache_is_refused_too(evil, torch_home):
    cached = torch_home / 'hub' / 'checkpoints' / 'evil.pth'
    for _ in range(2):
        with pytest.raises(UnsafeCheckpointError, match='builtins.exec'):
            CheckpointLoader.load_checkpoint(evil.url, map_location='cpu')
        assert cached.is_file()  # where torch.hub and mmengine cache it
    assert evil.server.requests == ['/evil.pth']  # the second load was served from the cache
    assert not evil.marker.exists()
    # a copy that mmengine's own loader (torch.hub) cached earlier is read from the same place, and refused
    with pytest.raises(UnsafeCheckpointError, match=str(cached)):
        load_checkpoint_file(evil.url)
    assert evil.server.requests == ['/evil.pth'] and not evil.marker.exists()


@pytest.mark.parametrize('scheme', ['open-mmlab://', 'openmmlab://', 'torchvision://', 'modelzoo://', 'mmcls://'])
def test_model_zoo_schemes_refuse_a_malicious_checkpoint(scheme, evil, torch_home, tmp_path, monkeypatch):
    # the model-zoo names resolve to our server: mmengine reads $MMENGINE_HOME/open_mmlab.json for open-mmlab://
    mmengine_home = tmp_path / 'mmengine_home'
    mmengine_home.mkdir()
    (mmengine_home / 'open_mmlab.json').write_text(json.dumps({'evil_net': evil.url}))
    monkeypatch.setenv('MMENGINE_HOME', str(mmengine_home))
    monkeypatch.setattr(mmengine_checkpoint, 'get_torchvision_models', lambda: {'evil_net': evil.url})
    monkeypatch.setattr(mmengine_checkpoint, 'get_mmcls_models', lambda: {'evil_net': evil.url})
    for load in (
        lambda: CheckpointLoader.load_checkpoint(f'{scheme}evil_net', map_location='cpu'),
        lambda: load_checkpoint_file(f'{scheme}evil_net'),
    ):
        with pytest.raises(UnsafeCheckpointError, match='builtins.exec'):
            load()
        assert not evil.marker.exists()
    assert evil.server.requests == ['/evil.pth']


def test_every_registered_scheme_is_safe():
    assert set(CheckpointLoader._schemes) >= {
        '',
        'http://',
        'https://',
        'open-mmlab://',
        'openmmlab://',
        'torchvision://',
        'modelzoo://',
        'mmcls://',
        'pavi://',
    }
    for prefix, loader in CheckpointLoader._schemes.items():
        assert getattr(loader, '_mmcluster_safe', False), prefix
        assert loader is not mmengine_checkpoint.load_from_http


def test_benign_checkpoints_load_over_http_and_from_the_cache(server, torch_home, monkeypatch, paca):
    source = PaCaViT(arch='tiny')
    torch.save(
        {'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}, 'meta': {'epoch': 1}},
        server.root / 'paca_tiny_det.pth',
    )
    url = f'{server.url}/paca_tiny_det.pth'
    for _ in range(2):
        init_from(paca, url)
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in paca.state_dict().items())
    assert server.requests == ['/paca_tiny_det.pth']
    # an mmengine checkpoint (HistoryBuffer, numpy) through a model-zoo name
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance('safety-benign')
    hub.update_scalar('train/loss', 0.25)
    torch.save(
        {
            'meta': {'seed': torch.tensor(3).numpy()},
            'message_hub': hub.state_dict(),
            'state_dict': {'w': torch.ones(2)},
        },
        server.root / 'epoch_1.pth',
    )
    monkeypatch.setattr(mmengine_checkpoint, 'get_torchvision_models', lambda: {'net': f'{server.url}/epoch_1.pth'})
    checkpoint = CheckpointLoader.load_checkpoint('torchvision://net', map_location='cpu')
    assert checkpoint['message_hub']['log_scalars']['train/loss'].current() == 0.25
    assert checkpoint['meta']['seed'] == 3


def test_offline_init_cfg_names_the_url_and_the_way_out(closed_port_url, torch_home, repo_root, paca):
    from mmengine.config import Config

    shipped = Config.fromfile(repo_root / 'configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py')
    file_name = shipped.model.backbone.init_cfg.checkpoint.rsplit('/', 1)[1]
    url = f'{closed_port_url}/pacavit/{file_name}'  # the shipped URL's file, on a host that cannot be reached
    with pytest.raises(CheckpointDownloadError) as info:
        init_from(paca, url)
    message = str(info.value)
    assert type(info.value) is not urllib.error.URLError and isinstance(info.value, ConnectionError)
    assert f'could not fetch checkpoint {url}' in message
    assert '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth' in message
    assert "pretrained_cfg_overlay=dict(file='/path/to/file.pth')" in message
    assert str(torch_home / 'hub' / 'checkpoints' / file_name) in message  # where a copy is looked up
    assert not (torch_home / 'hub' / 'checkpoints' / file_name).exists()  # no partial file left behind


def test_offline_error_carries_the_callers_hint(closed_port_url, torch_home, paca):
    hint = "Pass pretrained_cfg_overlay=dict(file='/path/to/file.pth') to timm.create_model."
    with pytest.raises(CheckpointDownloadError) as info:
        load_checkpoint_file(f'{closed_port_url}/paca_small.pth', hint=hint)
    assert hint in str(info.value) and info.value.url == f'{closed_port_url}/paca_small.pth'
    with pytest.raises(CheckpointDownloadError, match='paca_tiny.pth'):
        load_pretrained(paca, f'{closed_port_url}/paca_tiny.pth', hint=hint)


def test_http_errors_name_the_url(server, torch_home):
    with pytest.raises(CheckpointDownloadError, match=r'could not fetch checkpoint .*/missing\.pth \(HTTP 404'):
        load_checkpoint_file(f'{server.url}/missing.pth')
    assert not os.listdir(torch_home / 'hub' / 'checkpoints')


def test_load_checkpoint_file_needs_torch_only(tmp_path, evil):
    """The timm models load through load_checkpoint_file where mmengine is not installed."""
    import subprocess
    import sys

    good = tmp_path / 'good.pth'
    torch.save({'w': torch.ones(3)}, good)
    script = f"""
import importlib.util, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmengine', 'mmcv', 'mmdet', 'mmseg'):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location('checkpoint', {str(ROOT / 'mmcluster/utils/checkpoint.py')!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert 'mmengine' not in sys.modules
print(module.load_checkpoint_file({str(good)!r})['w'].sum().item())
try:
    module.load_checkpoint_file({evil.url!r})
except module.UnsafeCheckpointError as error:
    print('refused', error.global_name)
"""
    proc = subprocess.run(
        [sys.executable, '-c', script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TORCH_HOME=str(tmp_path / 'torch_home')),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['3.0', 'refused', 'builtins.exec']
    assert not evil.marker.exists()
