"""Cluster assignments of PaCa-ViT models as images (PaCa-ViT paper Sec. 3.3, Figs. 6, 9, 10).

    # ImageNet classifier: heatmaps, mean-threshold masks (Eqn. 7), masked re-classification (Eqn. 8)
    python tools/analysis_tools/visualize_clusters.py timm:paca_small IMAGE [IMAGE ...] --out-dir DIR \
        --checkpoint IMNET_224_pacavit_small_p2cconv_100_0.pth [--label 207] [--top-k 3] [--all-clusters]
    # detector or segmentor: heatmaps
    python tools/analysis_tools/visualize_clusters.py CONFIG IMAGE [IMAGE ...] --checkpoint CKPT --out-dir DIR

For every image it writes DIR/<image>_clusters.png: one row per clustering layer (stage-wise models: one per
clustered stage), the most selective clusters' heatmaps H^m = sigmoid(assignment logits before the softmax)
over the input; a PaCa segmentation head's class-aligned clusters form the last row. For classifiers also:

* DIR/<image>_groups.png (Fig. 6): each cluster's mask M^m = H^m > mean(H^m) (Eqn. 7) is upsampled
  (nearest) to the input and multiplies the image (Eqn. 8); the masked images are classified again. The
  positive group keeps the label, the negative group loses it; shown are the top-k of each, ranked by the
  probability of the label. The label is --label (an ImageNet class index), or the model's prediction on
  the whole image.
* with --all-clusters, DIR/<image>_<layer>_all.png (Figs. 9, 10): all M heatmaps of each layer.
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
from mmcluster.visualization import (masked_reclassification, save_all_clusters, save_group_figure,  # noqa: E402
                                     save_heatmap_grid)


def detector_or_segmentor_layers(model, inputs: torch.Tensor) -> tuple[OrderedDict, dict]:
    """Layer name -> assignment logits (M, h, w) of the first image, and names for class-aligned clusters."""
    if not hasattr(model.backbone, 'cluster_logits'):
        raise SystemExit(f'{type(model.backbone).__name__} has no clustering layers to visualise')
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


def build_classifier(name: str, checkpoint: str | None, pretrained: bool, device: str):
    import timm
    from mmcluster.models.backbones.paca_vit import convert_official_state_dict
    from mmcluster.utils.checkpoint import load_pretrained
    model = timm.create_model(name, pretrained=pretrained)
    if not hasattr(model, 'cluster_logits'):
        raise SystemExit(f'timm model {name} has no clustering layers to visualise')
    if checkpoint:
        load_pretrained(model, checkpoint, convert=convert_official_state_dict)
    return model.to(device).eval()


def classifier_inputs(model, image_path: str, device: str):
    """The [0, 1] image after timm's eval resize and crop, and a function normalising such images."""
    import timm
    from PIL import Image
    from torchvision import transforms
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    steps = list(transform.transforms)
    if not isinstance(steps[-1], transforms.Normalize):
        raise RuntimeError(f'unexpected timm eval transform {transform}')
    image = transforms.Compose(steps[:-1])(Image.open(image_path).convert('RGB')).to(device)
    return image, steps[-1]


def class_names(num_classes: int):
    if num_classes != 1000:
        return None
    import timm
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='a det/seg config file, or timm:NAME for a classifier')
    parser.add_argument('images', nargs='+')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--checkpoint', help='weights (required for configs; official ImageNet files work as they are)')
    parser.add_argument('--pretrained', action='store_true', help='timm: load the official weights from their URL')
    parser.add_argument('--label', type=int, help='timm: the ground-truth class (default: the prediction)')
    parser.add_argument('--top-k', type=int, default=3, help='timm: clusters per group in the groups figure')
    parser.add_argument('--all-clusters', action='store_true', help='also draw every cluster of every layer')
    parser.add_argument('--num-clusters', type=int, default=6, help='heatmaps per row (most selective first)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.num_clusters < 1 or args.top_k < 1:
        parser.error('--num-clusters and --top-k must be >= 1')

    if args.model.startswith('timm:'):
        model = build_classifier(args.model[len('timm:'):], args.checkpoint, args.pretrained, args.device)
        names = class_names(model.num_classes)
        if args.label is not None and not 0 <= args.label < model.num_classes:
            parser.error(f'--label must be a class index in [0, {model.num_classes})')
        for image_path in args.images:
            image, normalize = classifier_inputs(model, image_path, args.device)
            rgb = (image.permute(1, 2, 0) * 255).round().byte().cpu().numpy()
            with torch.no_grad():
                probs = model(normalize(image[None])).softmax(-1)[0]
            label = int(probs.argmax()) if args.label is None else args.label
            logits = OrderedDict((k, v[0]) for k, v in model.cluster_logits(normalize(image[None])).items())
            stem = osp.join(args.out_dir, osp.splitext(osp.basename(image_path))[0])
            label_name = names[label] if names else f'class {label}'
            save_heatmap_grid(rgb, logits, f'{stem}_clusters.png', args.num_clusters, title=label_name)
            results = OrderedDict((k, (v, masked_reclassification(model, image, v, label, normalize)))
                                  for k, v in logits.items())
            out = save_group_figure(rgb, results, f'{stem}_groups.png', label_name, float(probs[label]),
                                    args.top_k, names)
            print(f'wrote {stem}_clusters.png, {out}')
            for name, (layer_logits, result) in results.items():
                print(f'  {name}: {int(result["positive"].sum())} positive / {len(result["positive"])} clusters')
                if args.all_clusters:
                    save_all_clusters(rgb, layer_logits, f'{stem}_{name.replace(".", "-")}_all.png', title=name)
        return

    if not args.checkpoint:
        parser.error('--checkpoint is required with a config file')
    from mmcluster.apis import build_model, load_config, prepare_image
    model = build_model(load_config(args.model, args.cfg_options), args.checkpoint, args.device)
    for image_path in args.images:
        inputs, rgb = prepare_image(model, image_path)
        layers, names = detector_or_segmentor_layers(model, inputs)
        stem = osp.join(args.out_dir, osp.splitext(osp.basename(image_path))[0])
        out = save_heatmap_grid(rgb, layers, f'{stem}_clusters.png', args.num_clusters,
                                title=osp.basename(image_path), cluster_names=names)
        print(f'wrote {out}')
        if args.all_clusters:
            for name, layer_logits in layers.items():
                save_all_clusters(rgb, layer_logits, f'{stem}_{name.replace(".", "-")}_all.png', title=name)


if __name__ == '__main__':
    main()
