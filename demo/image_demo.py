"""Detection or segmentation inference on an image with a config and a checkpoint; draws the result.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT --out-file result.jpg [--score-thr 0.3] [--device cuda:0]

Detectors are drawn with mmdet's DetLocalVisualizer (boxes, masks, class names, scores), segmentors with
mmseg's SegLocalVisualizer (the class map blended over the image). CHECKPOINT (a file or URL) loads with
``weights_only=True`` and must fit the config's model exactly: a checkpoint of another model stops with the
list of keys that do not fit. IMAGE must be a file that OpenCV reads.
"""

from __future__ import annotations

import argparse
import copy
import os.path as osp
import sys

import mmcv

import mmcluster  # noqa: F401
from mmcluster.apis import build_model, load_config
from mmcluster.utils.checkpoint import CheckpointError


class ImageFileError(ValueError):
    """The image file cannot be decoded."""


def read_image(path: str):
    """The image as BGR uint8; FileNotFoundError / ImageFileError naming ``path`` otherwise."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'image {path} does not exist')
    image = mmcv.imread(path)
    if image is None:
        raise ImageFileError(f'{path} is not an image that OpenCV can read')
    return image


def dataset_meta(model, cfg) -> dict:
    """Class names and palette: the checkpoint's (what it was trained on), completed from the config's test
    dataset (as mmdet's init_detector does)."""
    from mmengine.registry import DATASETS

    meta = dict(getattr(model, 'dataset_meta', None) or {})
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True  # the metainfo only: no annotation file is read
    for key, value in DATASETS.build(dataset_cfg).metainfo.items():
        meta.setdefault(key, value)
    return meta


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

    image = read_image(args.image)
    cfg = load_config(args.config)
    model = build_model(cfg, args.checkpoint, args.device)
    model.dataset_meta = dataset_meta(model, cfg)
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import inference_detector
        from mmdet.registry import VISUALIZERS

        result = inference_detector(model, image)
        visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='mmcluster_demo'))
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample(
            'result',
            mmcv.bgr2rgb(image),
            result,
            draw_gt=False,
            show=False,
            pred_score_thr=args.score_thr,
            out_file=args.out_file,
        )
        kept = int((result.pred_instances.scores >= args.score_thr).sum())
        print(f'{kept} objects with score >= {args.score_thr}; drawn into {args.out_file}')
    else:
        from mmseg.apis import inference_model
        from mmseg.registry import VISUALIZERS

        result = inference_model(model, image)
        visualizer = VISUALIZERS.build(dict(type='SegLocalVisualizer', name='mmcluster_demo', alpha=args.opacity))
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample(
            'result', mmcv.bgr2rgb(image), result, draw_gt=False, show=False, out_file=args.out_file
        )
        classes = sorted(set(result.pred_sem_seg.data.unique().tolist()))
        names = [model.dataset_meta['classes'][c] for c in classes]
        print(f'classes present: {", ".join(names)}; drawn into {args.out_file}')
    return result


if __name__ == '__main__':
    try:
        main()
    except (CheckpointError, FileNotFoundError, ImageFileError) as error:  # messages that say it all: no traceback
        sys.exit(f'{sys.argv[0]}: error: {error}')
