"""Parameters and operations of a detector, segmentor, backbone or timm classifier, without any dataset.

    python tools/analysis_tools/get_flops.py configs/paca_vit/mask-rcnn_paca-tiny_fpn_1x_coco.py --shape 800 1280
    python tools/analysis_tools/get_flops.py \
        configs/paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py --shape 512 512
    python tools/analysis_tools/get_flops.py paca_small --shape 224 224        # a timm model (also timm:paca_small)
    python tools/analysis_tools/get_flops.py paca-small --shape 512            # a backbone preset (benchmark.py --list)
    # only the backbone of a config (the Expedite paper's Mask2Former Swin-L figures)
    python tools/analysis_tools/get_flops.py --backbone-only --shape 1152 \
        configs/expedite/mask2former_swin-l-p4-w12-hourglass-8x8_16xb1-lsj-100e_coco-panoptic.py

MODEL is a config file, a backbone preset of any family (the presets come from the families' arch tables),
or a timm model name.

Counting convention (the PaCa-ViT paper's "FLOPs", and what torchprofile/fvcore report): multiply-
accumulates (MACs) of convolutions and matrix products, including attention's QK^T and AV and the
clustering product C^T X; element-wise ops, norms and softmax are not counted. We count with torch's
FlopCounterMode (which sees fused ``scaled_dot_product_attention``; mmengine's counter does not) and
print MACs, and FLOPs = 2 x MACs for reference. torchprofile, which the paper used for its starred
detection and segmentation numbers, counts a transposed conv by its output positions (4x the MACs of the
Mask R-CNN mask head's stride-2 upsampling); where that differs it is printed too. Detectors are measured
in mmdet's ``tensor`` mode (backbone, neck, RPN, box head on the test-time proposals, mask head on 100 of
them); segmentors in mmseg's (backbone and decode head; the auxiliary head is not used at inference).
"""

from __future__ import annotations

import argparse

from mmengine.config import DictAction

import mmcluster  # noqa: F401  (registers the models)
from mmcluster.apis import load_config
from mmcluster.utils.benchmark import backbone_presets, build_named_model
from mmcluster.utils.flops import config_complexity, module_complexity, timm_complexity


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        'model',
        help='a det/seg config file, a backbone preset (e.g. paca-small), or a timm model '
        'name (e.g. paca_small or timm:paca_small)',
    )
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=None,
        help='input height and width (one number: square). Default: 800 1280 for detectors, '
        '512 512 for segmentors and backbones, 224 224 for classifiers',
    )
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help="with config files: only the backbone (as the Expedite paper counts Mask2Former's Swin-L)",
    )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.backbone_only and not args.model.endswith('.py'):
        parser.error('--backbone-only applies to config files only')
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error('--shape takes H W or one size')

    if args.model.endswith('.py'):
        cfg = load_config(args.model, args.cfg_options)
        default = (800, 1280) if cfg.default_scope == 'mmdet' else (512, 512)
        height, width = (args.shape * 2)[:2] if args.shape else default
        if args.backbone_only:
            from mmengine.registry import MODELS

            cfg.model.backbone.init_cfg = None
            result = module_complexity(MODELS.build(cfg.model.backbone), height, width)
        else:
            result = config_complexity(cfg, height, width)
    else:
        if args.cfg_options:
            parser.error('--cfg-options applies to config files only')
        if args.model in backbone_presets():
            height, width = (args.shape * 2)[:2] if args.shape else (512, 512)
            result = module_complexity(build_named_model(args.model)[1], height, width)
        else:
            import timm

            name = args.model[len('timm:') :] if args.model.startswith('timm:') else args.model
            if not timm.is_model(name):
                parser.error(f'{args.model} is neither a config file, a backbone preset nor a timm model')
            height, width = (args.shape * 2)[:2] if args.shape else (224, 224)
            result = timm_complexity(name, height, width)

    print(f'model  : {args.model}')
    print(f'input  : 3 x {height} x {width}')
    print(f'params : {result["params"] / 1e6:.2f} M ({result["params"]:,})')
    for name, macs in result['macs_by_module'].items():
        print(f'  {name:14s} {macs / 1e9:8.2f} GMACs')
    print(f'MACs   : {result["macs"] / 1e9:.2f} G   (FLOPs = 2 x MACs = {2 * result["macs"] / 1e9:.2f} G)')
    if result['macs_torchprofile'] != result['macs']:
        print(
            f"MACs as torchprofile counts them (transposed convs per output position; the paper's "
            f'starred numbers): {result["macs_torchprofile"] / 1e9:.2f} G'
        )
    return result


if __name__ == '__main__':
    main()
