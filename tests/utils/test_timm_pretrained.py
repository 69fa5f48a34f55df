"""timm.create_model(..., pretrained=True) for mmcluster's models: offline errors name the URL and the way to
a local file, and a malicious file served over http is refused."""

import pytest
import timm

import mmcluster  # noqa: F401
from mmcluster.utils.checkpoint import CheckpointDownloadError, UnsafeCheckpointError


def test_offline_error_names_the_url_and_the_local_file_option(closed_port_url, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    url = f'{closed_port_url}/IMNET_224_pacavit_tiny_p2cconv_100_0.pth'
    with pytest.raises(CheckpointDownloadError) as info:
        timm.create_model('paca_tiny', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    message = str(info.value)
    assert url in message
    assert "timm.create_model('paca_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=" in message


def test_malicious_file_over_http_is_refused(evil, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    with pytest.raises(UnsafeCheckpointError):
        timm.create_model('paca_tiny', pretrained=True, pretrained_cfg_overlay=dict(url=evil.url))


def test_a_model_without_published_weights_says_how_to_load_yours():
    with pytest.raises(RuntimeError, match='pretrained_cfg_overlay=dict'):
        timm.create_model('paca_tiny_teacher', pretrained=True)
