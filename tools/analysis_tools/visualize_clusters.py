"""Cluster-assignment heatmaps of a PaCa-ViT detector or segmentor (PaCa-ViT paper Sec. 3.3).

    python tools/analysis_tools/visualize_clusters.py CONFIG CHECKPOINT IMAGE [IMAGE ...] --out-dir DIR

For every image, writes DIR/<image name>_clusters.png: one row per clustering layer of the backbone
(stage-wise models: one per clustered stage), showing the most selective clusters' heatmaps
(sigmoid of the assignment logits before the softmax) over the input. With a PaCa segmentation head,
its class-aligned clusters form the last row.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from collections import OrderedDict

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

import mmcluster  # noqa: E402,F401
from mmcluster.apis import build_model, load_config, prepare_image  # noqa: E402
from mmcluster.visualization import save_heatmap_grid  # noqa: E402


def collect_cluster_logits(model, inputs: torch.Tensor) -> tuple[OrderedDict, dict]:
    """Layer name -> assignment logits (M, h, w) of the first image, and names for class-aligned clusters."""
    if not hasattr(model.backbone, 'cluster_logits'):
        raise ValueError(f'{type(model.backbone).__name__} has no clustering layers to visualise')
    layers = OrderedDict((k, v[0]) for k, v in model.backbone.cluster_logits(inputs).items())
    names = {}
    head = getattr(model, 'decode_head', None)
    if head is not None and hasattr(head, 'forward_with_clusters'):
        with torch.no_grad():
            _, head_logits = head.forward_with_clusters(model.extract_feat(inputs))
        layers['decode_head.to_clusters'] = head_logits[0]
        classes = (getattr(model, 'dataset_meta', None) or {}).get('classes')
        if classes:
            names['decode_head.to_clusters'] = list(classes)
    return layers, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('images', nargs='+')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--num-clusters', type=int, default=6, help='heatmaps per row (most selective first)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    if args.num_clusters < 1:
        parser.error('--num-clusters must be >= 1')

    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg, args.checkpoint, args.device)
    for image_path in args.images:
        inputs, rgb = prepare_image(model, image_path)
        layers, names = collect_cluster_logits(model, inputs)
        stem = osp.splitext(osp.basename(image_path))[0]
        out = save_heatmap_grid(rgb, layers, osp.join(args.out_dir, f'{stem}_clusters.png'), args.num_clusters,
                                title=osp.basename(image_path), cluster_names=names)
        print(f'wrote {out}')


if __name__ == '__main__':
    main()
