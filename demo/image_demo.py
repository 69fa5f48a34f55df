"""Detection or segmentation inference on an image with a config and a checkpoint; draws the result.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT --out-file result.jpg [--score-thr 0.3] [--device cuda:0]

Detectors are drawn with mmdet's DetLocalVisualizer (boxes, masks, class names, scores), segmentors with
mmseg's SegLocalVisualizer (the class map blended over the image). Checkpoints load with
``weights_only=True``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmcv  # noqa: E402

import mmcluster  # noqa: E402,F401
from mmcluster.apis import load_config  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out-file', required=True)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detectors: lowest score drawn')
    parser.add_argument('--opacity', type=float, default=0.5, help='segmentors: opacity of the class map')
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    cfg.model.backbone.init_cfg = None
    image = mmcv.imread(args.image)
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import inference_detector, init_detector
        from mmdet.registry import VISUALIZERS
        model = init_detector(cfg, args.checkpoint, device=args.device)
        result = inference_detector(model, image)
        visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='mmcluster_demo'))
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample('result', mmcv.bgr2rgb(image), result, draw_gt=False, show=False,
                                  pred_score_thr=args.score_thr, out_file=args.out_file)
        kept = int((result.pred_instances.scores >= args.score_thr).sum())
        print(f'{kept} objects with score >= {args.score_thr}; drawn into {args.out_file}')
    else:
        from mmseg.apis import inference_model, init_model
        from mmseg.registry import VISUALIZERS
        model = init_model(cfg, args.checkpoint, device=args.device)
        result = inference_model(model, image)
        visualizer = VISUALIZERS.build(dict(type='SegLocalVisualizer', name='mmcluster_demo', alpha=args.opacity))
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample('result', mmcv.bgr2rgb(image), result, draw_gt=False, show=False,
                                  out_file=args.out_file)
        classes = sorted(set(result.pred_sem_seg.data.unique().tolist()))
        names = [model.dataset_meta['classes'][c] for c in classes]
        print(f'classes present: {", ".join(names)}; drawn into {args.out_file}')
    return result


if __name__ == '__main__':
    main()
