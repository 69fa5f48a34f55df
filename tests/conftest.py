import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('MPLBACKEND', 'Agg')
# One of several pytest-xdist workers (`make test`): one torch thread each, also in the tools the tests start (set
# before torch is imported), so that the workers do not oversubscribe the cores.
if int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')) > 1:
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'

import mmcluster  # noqa: E402,F401  (registers everything before any test runs)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory) -> Path:
    """A small copy of the bundled shapes dataset (both formats)."""
    from mmcluster.datasets import ShapesSpec, make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp('shapes'), ShapesSpec(num_train=16, num_val=8))


def _restoring_default_scope():
    from mmengine.registry import DefaultScope

    saved = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


@pytest.fixture(autouse=True)
def isolated_default_scope():
    """Tools under test call ``init_default_scope``; mmengine keeps that scope
    process-wide and ``Registry.build`` follows it, so restore it after each
    test (otherwise an mmseg build in a later test is routed to mmdet's registry)."""
    yield from _restoring_default_scope()


@pytest.fixture(autouse=True, scope='module')
def isolated_default_scope_of_module():
    """The same around each test module, for the scopes that its module-scoped fixtures set (a tool run once
    for the module's tests): set up before them, as an autouse fixture of their scope, it removes such a scope
    before the next module, whichever that is (pytest-xdist's workers run the modules in any order)."""
    yield from _restoring_default_scope()
