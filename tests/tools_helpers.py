import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DET_DEMO = 'configs/demo/mask-rcnn_paca-tiny_fpn_shapes.py'
SEG_DEMO = 'configs/demo/paca-head_paca-tiny_shapes.py'


def run(args, timeout=600, env=None):
    """Run a command from the repo root; fail with its output if it fails."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg', **(env or {}))
    cmd = [sys.executable] + [str(a) for a in args] if str(args[0]).endswith('.py') else [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}'
    return output


def shapes_options(shapes_root, kind):
    """--cfg-options pointing a demo config at another copy of the shapes dataset."""
    if kind == 'det':
        root = f'{shapes_root}/coco/'
        return [
            f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}',
            f'val_evaluator.ann_file={root}annotations/instances_val.json',
            f'test_evaluator.ann_file={root}annotations/instances_val.json',
        ]
    root = f'{shapes_root}/ade'
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
    ]


def load_tool(path: str) -> ModuleType:
    """A tool script (repo-relative path, e.g. 'tools/analysis_tools/get_flops.py') as a fresh module, to call
    its functions in-process. Registered in sys.modules under a name of its own (dataclasses need that)."""
    name = 'tool_' + Path(path).with_suffix('').as_posix().replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
