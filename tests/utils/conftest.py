"""Fixtures for the checkpoint-safety tests: a local http server, a malicious checkpoint, a private torch
hub cache."""

import http.server
import socket
import threading
from types import SimpleNamespace

import pytest
import torch


class Payload:
    """Unpickling this runs code: it creates ``marker`` (as a real exploit would run anything else)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").close()',))


def save_malicious(path, marker) -> None:
    """A checkpoint that looks like mmengine's, with the payload in its meta."""
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'note': Payload(marker)}}, path)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private torch hub cache for this test (``$TORCH_HOME/hub/checkpoints``), also for subprocesses."""
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    return home


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1 from a thread; records the requested paths; shut down afterwards."""
    root = tmp_path / 'www'
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        timeout = 30  # a stuck client cannot hold the server

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):  # noqa: A002
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(root=root, url=f'http://127.0.0.1:{httpd.server_port}', requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def evil(server, tmp_path):
    """A malicious checkpoint served as URL/evil.pth; ``marker`` must never appear."""
    marker = tmp_path / 'payload_ran'
    save_malicious(server.root / 'evil.pth', marker)
    yield SimpleNamespace(url=f'{server.url}/evil.pth', marker=marker, server=server)
    assert not marker.exists(), 'the payload of the malicious checkpoint ran'


@pytest.fixture
def closed_port_url():
    """An http URL on 127.0.0.1 where nothing listens (as an unreachable host offline)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return f'http://127.0.0.1:{port}'


@pytest.fixture(scope='session')
def paca():
    """A PaCa-Tiny backbone shared by tests that only call ``init_weights`` with another ``init_cfg``
    (building one takes seconds)."""
    from mmcluster.models.backbones.paca_vit import PaCaViT

    return PaCaViT(arch='tiny')


def init_from(model, checkpoint):
    """``model.init_weights()`` with ``init_cfg=dict(type='Pretrained', checkpoint=checkpoint)``."""
    model.init_cfg = dict(type='Pretrained', checkpoint=str(checkpoint))
    try:
        model.init_weights()
    finally:
        model.init_cfg = None
