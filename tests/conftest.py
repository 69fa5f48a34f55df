import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('MPLBACKEND', 'Agg')

import mmcluster  # noqa: E402,F401  (registers everything before any test runs)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory) -> Path:
    """A small copy of the bundled shapes dataset (both formats)."""
    from mmcluster.datasets import ShapesSpec, make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp('shapes'), ShapesSpec(num_train=16, num_val=8))


@pytest.fixture(autouse=True)
def isolated_default_scope():
    """Tools under test call ``init_default_scope``; mmengine keeps that scope
    process-wide and ``Registry.build`` follows it, so restore it after each
    test (otherwise an mmseg build in a later test is routed to mmdet's registry)."""
    from mmengine.registry import DefaultScope

    saved = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
