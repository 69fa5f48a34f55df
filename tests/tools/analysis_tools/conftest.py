import pytest

from .toy_family import TOY_CONVERTER, ToyBackbone


@pytest.fixture
def toy_family(monkeypatch):
    """The toy family plugged in as a new family would be: its backbone listed in MM_BACKBONES and its
    converter registered (both undone after the test)."""
    from mmcluster.models import backbones, conversion

    monkeypatch.setattr(backbones, 'MM_BACKBONES', backbones.MM_BACKBONES + (ToyBackbone,))
    monkeypatch.setitem(conversion._CONVERTERS, 'toy', TOY_CONVERTER)
    return ToyBackbone


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread for these small models: on a busy 2-core machine, two spinning OpenMP threads make
    a tiny training step 20x slower. Restored after each test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
