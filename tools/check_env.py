"""Check that this Python environment holds mmcluster's pinned stack and that mmcv's compiled ops work.

    python tools/check_env.py              # versions against requirements/pins.txt, mmcv ops, mmcluster (and its .mim)
    python tools/check_env.py --mmcv-only  # only: mmcv imports and its RoIAlign / nms ops run

Exits non-zero and says what is wrong otherwise. Used by tools/setup_env.sh to accept or reject a
cached mmcv wheel.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import sys
from pathlib import Path

PINS = Path(__file__).resolve().parents[1] / 'requirements' / 'pins.txt'
# distribution name -> module to import
MODULES = {
    'torch': 'torch',
    'torchvision': 'torchvision',
    'mmengine': 'mmengine',
    'mmcv': 'mmcv',
    'mmdet': 'mmdet',
    'mmsegmentation': 'mmseg',
    'timm': 'timm',
    'einops': 'einops',
    'pycocotools': 'pycocotools.coco',
    'ftfy': 'ftfy',
    'regex': 'regex',
    'matplotlib': 'matplotlib',
}


def exact_pins() -> dict[str, str]:
    pins = {}
    for line in PINS.read_text().splitlines():
        match = re.match(r'^\s*([A-Za-z0-9_.\-]+)==([^\s#]+)', line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def check_mmcv_ops() -> None:
    import torch
    from mmcv.ops import RoIAlign, nms

    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], device=device)
        scores = torch.tensor([0.9, 0.8, 0.7], device=device)
        _, keep = nms(boxes, scores, iou_threshold=0.5)
        if keep.tolist() != [0, 2]:
            raise RuntimeError(f'mmcv nms on {device} kept {keep.tolist()}, expected [0, 2]')
        feats = torch.arange(16.0, device=device).view(1, 1, 4, 4)
        rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], device=device)
        out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
        if out.shape != (1, 1, 2, 2) or not torch.isfinite(out).all():
            raise RuntimeError(f'mmcv RoIAlign on {device} returned {out}')


def check_mim(quiet: bool) -> list:
    """The installed mmcluster has .mim/configs and .mim/model-index.yml (`mmcluster::` config paths)."""
    from mmcluster.utils.mim import mim_dir

    missing = [name for name in ('configs', 'model-index.yml') if not os.path.exists(os.path.join(mim_dir(), name))]
    if missing:
        return [f'{mim_dir()} lacks {", ".join(missing)}, which mmcluster:: config paths need (reinstall mmcluster)']
    if not quiet:
        print(f'mmcluster .mim   {mim_dir()} -> {os.path.realpath(os.path.join(mim_dir(), "configs"))}')
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mmcv-only', action='store_true', help='only check that the mmcv ops work')
    parser.add_argument('--quiet', action='store_true', help='print only problems')
    args = parser.parse_args()

    problems = []
    if not args.mmcv_only:
        for dist, wanted in exact_pins().items():
            try:
                found = metadata.version(dist)
            except metadata.PackageNotFoundError:
                problems.append(f'{dist} is not installed (pinned {wanted})')
                continue
            if found.split('+')[0] != wanted:
                problems.append(f'{dist} {found} is installed, pinned {wanted}')
            elif not args.quiet:
                print(f'{dist:16s} {found}')
        for dist, module in MODULES.items():
            try:
                __import__(module)
            except Exception as exc:  # noqa: BLE001 - report any import failure by name
                problems.append(f'import {module} failed: {exc!r}')
        try:
            import mmcluster  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            problems.append(f'import mmcluster failed: {exc!r}')
        else:
            problems += check_mim(args.quiet)
    try:
        check_mmcv_ops()
        if not args.quiet:
            print('mmcv ops         RoIAlign and nms run')
    except Exception as exc:  # noqa: BLE001
        problems.append(f'mmcv compiled ops do not work: {exc!r}')

    for problem in problems:
        print(f'check_env: {problem}', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
