"""Convert an official PaCa-ViT checkpoint (iVMCL/PaCaViT release, spec §3) into an mmcluster checkpoint.

    python tools/model_converters/paca_vit_official.py IMNET_224_pacavit_small_p2cconv_100_0.pth paca_small.pth
    python tools/model_converters/paca_vit_official.py mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco.pth out.pth
    python tools/model_converters/paca_vit_official.py pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k.pth out.pth

ImageNet, COCO (Mask R-CNN) and ADE20K (PaCa head, UperNet) files are recognised by their keys. The
output holds ``state_dict`` (and the source's ``meta`` where it is plain data) and loads with
``tools/test.py CONFIG OUT`` or ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. ImageNet
checkpoints need no conversion for ``init_cfg`` or timm's ``pretrained=True``: those convert on load.
The source is read with ``weights_only=True``; a file holding other objects than tensors, numbers,
strings, numpy arrays and mmengine's log buffers is refused, not unpickled.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from mmcluster.models.official import convert_official_paca_checkpoint  # noqa: E402
from mmcluster.utils.checkpoint import extract_state_dict, safe_load  # noqa: E402


def convert(src: str, dst: str) -> str:
    raw = safe_load(src)
    state_dict, kind = convert_official_paca_checkpoint(extract_state_dict(raw))
    out = {'state_dict': state_dict, 'meta': {'converted_from': osp.basename(src), 'kind': kind}}
    if isinstance(raw, dict) and isinstance(raw.get('meta'), dict):
        out['meta']['source_meta'] = {k: v for k, v in raw['meta'].items() if isinstance(v, (str, int, float, list, tuple, dict))}
    torch.save(out, dst)
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='official checkpoint file')
    parser.add_argument('dst', help='output file')
    args = parser.parse_args()
    kind = convert(args.src, args.dst)
    print(f'converted {kind} checkpoint {args.src} -> {args.dst}')


if __name__ == '__main__':
    main()
