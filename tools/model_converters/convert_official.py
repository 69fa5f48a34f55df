"""Convert an official checkpoint of any mmcluster family into an mmcluster checkpoint.

    python tools/model_converters/convert_official.py SRC DST [--family paca_vit]

    # PaCa-ViT (github.com/iVMCL/PaCaViT releases): ImageNet, COCO Mask R-CNN, ADE20K PaCa head / UperNet
    python tools/model_converters/convert_official.py IMNET_224_pacavit_small_p2cconv_100_0.pth paca_small.pth
    python tools/model_converters/convert_official.py \
        mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco.pth out.pth

The family is recognised from the keys unless ``--family`` names it; its converter comes from
``mmcluster.models.conversion`` (strict: a key that no rule maps is an error naming it). ImageNet, detection
and segmentation files are told apart by their keys: the backbone (and the family's official decode head)
are renamed, mmdet's / mmseg's own necks and heads are kept. The output holds ``state_dict`` (and the
source's ``meta`` where it is plain data) and loads with ``tools/test.py CONFIG OUT`` or
``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. ImageNet checkpoints need no conversion for
``init_cfg`` or timm's ``pretrained=True``: those convert on load. The source is read with
``weights_only=True`` against mmcluster's allow-list: a file holding other objects is refused, not unpickled.
"""

from __future__ import annotations

import argparse
import os.path as osp

import torch

import mmcluster  # noqa: F401  (registers the families' converters)
from mmcluster.models.conversion import detect_family, families, get_converter
from mmcluster.utils.checkpoint import extract_state_dict, safe_load


def convert(src: str, dst: str, family: str | None = None) -> tuple[str, str]:
    """Convert ``src`` into ``dst``; returns (family, kind)."""
    raw = safe_load(src)
    state_dict = extract_state_dict(raw)
    family = family or detect_family(state_dict)
    state_dict, kind = get_converter(family).convert_checkpoint(state_dict)
    out = {'state_dict': state_dict, 'meta': {'converted_from': osp.basename(src), 'family': family, 'kind': kind}}
    if isinstance(raw, dict) and isinstance(raw.get('meta'), dict):
        out['meta']['source_meta'] = {
            k: v for k, v in raw['meta'].items() if isinstance(v, (str, int, float, list, tuple, dict))
        }
    torch.save(out, dst)
    return family, kind


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='official checkpoint file')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--family', choices=families(), help='the model family (default: recognised from the keys)')
    args = parser.parse_args(argv)
    family, kind = convert(args.src, args.dst, args.family)
    print(f'converted {family} {kind} checkpoint {args.src} -> {args.dst}')


if __name__ == '__main__':
    main()
