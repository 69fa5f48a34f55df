"""Cluster assignments of clustering ViTs as images (PaCa-ViT paper Sec. 3.3, Figs. 6, 9, 10).

    # ImageNet classifier: heatmaps, mean-threshold masks (Eqn. 7), masked re-classification (Eqn. 8)
    python tools/analysis_tools/visualize_clusters.py timm:paca_small IMAGE [IMAGE ...] --out-dir DIR \
        --checkpoint IMNET_224_pacavit_small_p2cconv_100_0.pth [--label 207] [--top-k 3] [--all-clusters]
    # detector or segmentor: heatmaps
    python tools/analysis_tools/visualize_clusters.py CONFIG IMAGE [IMAGE ...] --checkpoint CKPT --out-dir DIR

Works for every family whose backbone / classifier implements the cluster-map protocol of
mmcluster/models/backbones/base.py: ``cluster_maps(x)`` gives each clustering layer's map (B, M, h, w),
here the assignment logits before the softmax over tokens. For every image it writes
DIR/<image>_clusters.png: one row per clustering layer, the most selective clusters' heatmaps
H^m = sigmoid(map) over the input; a decode head with class-aligned clusters (one that has
``forward_with_clusters``, e.g. the PaCa segmentation head) forms the last row. For classifiers also:

* DIR/<image>_groups.png (Fig. 6): each cluster's mask M^m = H^m > mean(H^m) (Eqn. 7) is upsampled
  (nearest) to the input and multiplies the image (Eqn. 8); the masked images are classified again. The
  positive group keeps the label, the negative group loses it; shown are the top-k of each, ranked by the
  probability of the label. The label is --label (an ImageNet class index), or the model's prediction on
  the whole image.
* with --all-clusters, DIR/<image>_<layer>_all.png (Figs. 9, 10): all M heatmaps of each layer.

Families whose clusters are hard assignments (every token in exactly one cluster: the maps are one-hot over
M, e.g. SecViT's equitable clusters) also get DIR/<image>_cluster_ids.png, the SecViT paper's Fig. 4: the
image, then one panel per clustering layer with every token coloured by its cluster id (the same colour is
the same cluster). For example, SecViT with random weights on the bundled shapes data:

    python tools/analysis_tools/visualize_clusters.py timm:secvit_tiny data/shapes/coco/val/val_00000.jpg \
        --out-dir work_dirs/clusters

A classifier's --checkpoint may be in mmcluster's layout or in the family's official one: it is converted
by the family's converter (mmcluster.models.conversion), the family being the model's, or else the one
whose official layout the checkpoint uses.
"""

from __future__ import annotations

import argparse
import os.path as osp
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from mmengine.config import DictAction

import mmcluster  # noqa: F401  (registers the models)
from mmcluster.visualization import (
    NoClusterMapsError,
    image_cluster_maps,
    masked_reclassification,
    save_all_clusters,
    save_figure,
    save_group_figure,
    save_heatmap_grid,
)


def detector_or_segmentor_layers(model, inputs: torch.Tensor) -> tuple[OrderedDict, dict]:
    """Layer name -> map (M, h, w) of the first image, through the backbone's ``cluster_maps``, plus a decode
    head's class-aligned clusters; and the names of such clusters (the dataset's classes)."""
    layers = image_cluster_maps(model.backbone, inputs)
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


ID_PANEL_INCHES = 2.2  # the cluster-id figure: one square panel per column, at ID_DPI
ID_DPI = 100


def hard_cluster_ids(maps: torch.Tensor) -> Optional[torch.Tensor]:
    """The cluster id (h, w) of every token when ``maps`` (M, h, w) is a hard assignment: one-hot over the M
    clusters at every position (SecViT's ``cluster_maps``). None for anything else, e.g. PaCa's assignment
    logits."""
    maps = maps.float()
    if not bool(((maps == 0) | (maps == 1)).all()) or not bool((maps.sum(dim=0) == 1).all()):
        return None
    return maps.argmax(dim=0)


def cluster_palette(num_clusters: int) -> np.ndarray:
    """(num_clusters, 3) RGB colours in [0, 1]. Hues step by the golden ratio and brightness alternates, so
    clusters with neighbouring ids (neighbouring in SEC's sort order, hence similar scores) differ clearly."""
    from matplotlib.colors import hsv_to_rgb

    index = np.arange(num_clusters)
    hue = (index * 0.6180339887498949) % 1.0
    saturation = np.where(index % 2 == 0, 0.9, 0.55)
    value = np.where(index % 3 == 2, 0.7, 0.95)
    return hsv_to_rgb(np.stack([hue, saturation, value], axis=1))


def colour_by_cluster(image: np.ndarray, ids: torch.Tensor, num_clusters: int, alpha: float = 0.65) -> np.ndarray:
    """The RGB uint8 ``image`` with every token's area (the id map (h, w), upsampled nearest to the image)
    painted in its cluster's colour, blended with weight ``alpha``."""
    from PIL import Image

    colours = (cluster_palette(num_clusters)[ids.cpu().numpy()] * 255).astype(np.uint8)  # (h, w, 3)
    colours = np.asarray(Image.fromarray(colours).resize(image.shape[1::-1], Image.NEAREST), dtype=np.float64)
    return (alpha * colours + (1 - alpha) * image).round().clip(0, 255).astype(np.uint8)


def save_cluster_id_figure(
    image: np.ndarray, layers: Mapping[str, torch.Tensor], out_file, title: Optional[str] = None
) -> Optional[Path]:
    """The SecViT paper's Fig. 4 for one image: the image, then one panel per clustering layer whose map
    (M, h, w) is a hard assignment, every token coloured by its cluster id. Layers with soft maps are left
    out; returns None (and writes nothing) when there is no hard one. Prints each drawn layer's cluster
    count and sizes."""
    ids = OrderedDict()
    for name, maps in layers.items():
        layer_ids = hard_cluster_ids(maps)
        if layer_ids is not None:
            ids[name] = (layer_ids, maps.shape[0])
    if not ids:
        return None
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cols = 1 + len(ids)
    fig, axes = plt.subplots(1, cols, figsize=(ID_PANEL_INCHES * cols, ID_PANEL_INCHES + 0.4), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title('input', fontsize=8)
    lines = []
    for axis, (name, (layer_ids, num_clusters)) in zip(axes[0, 1:], ids.items()):
        axis.imshow(colour_by_cluster(image, layer_ids, num_clusters))
        axis.set_title(f'{name.replace("stages.", "stage ").replace(".attn", "")}: {num_clusters} clusters', fontsize=8)
        sizes = torch.bincount(layer_ids.flatten(), minlength=num_clusters)
        lines.append(
            f'  {name}: {num_clusters} clusters of {int(sizes.min())}-{int(sizes.max())} tokens '
            f'({layer_ids.shape[0]}x{layer_ids.shape[1]} map)'
        )
    for axis in axes[0]:
        axis.axis('off')
    out_file = save_figure(fig, out_file, title, dpi=ID_DPI)
    print(f'wrote {out_file} (tokens coloured by cluster id)')
    print('\n'.join(lines))
    return out_file


def classifier_family(model: torch.nn.Module, state_dict: Optional[dict] = None) -> Optional[str]:
    """The converter family of a classifier: its class's ``family``, else the family named like the module
    that defines its class (``mmcluster.models.backbones.paca_vit`` -> ``paca_vit``), else the family whose
    official layout ``state_dict`` uses; None if none of these is known."""
    from mmcluster.models.conversion import detect_family, families

    known = families()
    family = getattr(type(model), 'family', None)
    if family in known:
        return family
    module_family = type(model).__module__.rsplit('.', 1)[-1]
    if module_family in known:
        return module_family
    if state_dict is not None:
        try:
            return detect_family(state_dict)
        except ValueError:
            return None
    return None


def load_classifier_checkpoint(model: torch.nn.Module, checkpoint: str) -> Optional[str]:
    """Load ``checkpoint`` (mmcluster's or the official layout) into ``model`` through its family's converter;
    every tensor of the model must be in it. Returns the family (None: loaded without conversion)."""
    from mmcluster.models.conversion import get_converter
    from mmcluster.utils.checkpoint import extract_state_dict, load_checkpoint_file, load_pretrained

    family = classifier_family(model)
    if family is None:
        family = classifier_family(model, extract_state_dict(load_checkpoint_file(checkpoint)))
    convert = get_converter(family).convert_backbone if family is not None else None
    report = load_pretrained(model, checkpoint, convert=convert)
    if report.missing:
        raise ValueError(
            f'{checkpoint} lacks {len(report.missing)} tensors of {type(model).__name__} '
            f'(family {family}), e.g. {report.missing[:5]}: is it a checkpoint of this model?'
        )
    return family


def build_classifier(name: str, checkpoint: Optional[str], pretrained: bool, device: str):
    import timm

    model = timm.create_model(name, pretrained=pretrained)
    if checkpoint:
        load_classifier_checkpoint(model, checkpoint)
    return model.to(device).eval()


def classifier_inputs(model, image_path: str, device: str, input_size: Optional[tuple[int, int]] = None):
    """The [0, 1] image after timm's eval resize and crop (to ``input_size`` (H, W) if given, else the model's
    default size), and a function normalising such images."""
    import timm
    from PIL import Image
    from torchvision import transforms

    args = {} if input_size is None else {'input_size': (3, *input_size)}
    config = timm.data.resolve_data_config(args, model=model)
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


def classifier_figures(
    model,
    image_path: str,
    out_dir: str,
    label: Optional[int] = None,
    top_k: int = 3,
    num_clusters: int = 6,
    all_clusters: bool = False,
    device: str = 'cpu',
    input_size: Optional[tuple[int, int]] = None,
) -> dict:
    """Heatmaps, groups (and with ``all_clusters`` every cluster) of one image for a classifier implementing
    the cluster-map protocol. Returns layer name -> :func:`masked_reclassification`'s result."""
    names = class_names(model.num_classes)
    image, normalize = classifier_inputs(model, image_path, device, input_size)
    rgb = (image.permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    with torch.no_grad():
        probs = model(normalize(image[None])).softmax(-1)[0]
    label = int(probs.argmax()) if label is None else label
    logits = image_cluster_maps(model, normalize(image[None]))
    stem = osp.join(out_dir, osp.splitext(osp.basename(image_path))[0])
    label_name = names[label] if names else f'class {label}'
    save_heatmap_grid(rgb, logits, f'{stem}_clusters.png', num_clusters, title=label_name)
    save_cluster_id_figure(rgb, logits, f'{stem}_cluster_ids.png', title=label_name)
    results = OrderedDict(
        (k, (v, masked_reclassification(model, image, v, label, normalize))) for k, v in logits.items()
    )
    out = save_group_figure(rgb, results, f'{stem}_groups.png', label_name, float(probs[label]), top_k, names)
    print(f'wrote {stem}_clusters.png, {out} (input {image.shape[1]}x{image.shape[2]}, label {label_name})')
    for name, (layer_logits, result) in results.items():
        print(f'  {name}: {int(result["positive"].sum())} positive / {len(result["positive"])} clusters')
        if all_clusters:
            save_all_clusters(rgb, layer_logits, f'{stem}_{name.replace(".", "-")}_all.png', title=name)
    return OrderedDict((k, result) for k, (_, result) in results.items())


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
    parser.add_argument(
        '--input-size',
        type=int,
        nargs='+',
        metavar='SIZE',
        help="timm: the classifier's input, H W or one size (default: the model's, e.g. 224)",
    )
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.num_clusters < 1 or args.top_k < 1:
        parser.error('--num-clusters and --top-k must be >= 1')
    input_size = None
    if args.input_size is not None:
        if len(args.input_size) not in (1, 2) or min(args.input_size) < 32:
            parser.error(f'--input-size takes H W or one size, each >= 32; got {args.input_size}')
        input_size = tuple((args.input_size * 2)[:2])

    if args.model.startswith('timm:'):
        try:
            model = build_classifier(args.model[len('timm:') :], args.checkpoint, args.pretrained, args.device)
        except (ValueError, KeyError) as error:
            parser.error(f'{args.model}: {error}')
        if args.label is not None and not 0 <= args.label < model.num_classes:
            parser.error(f'--label must be a class index in [0, {model.num_classes})')
        for image_path in args.images:
            try:
                classifier_figures(
                    model,
                    image_path,
                    args.out_dir,
                    args.label,
                    args.top_k,
                    args.num_clusters,
                    args.all_clusters,
                    args.device,
                    input_size,
                )
            except NoClusterMapsError as error:
                parser.error(f'{args.model}: {error}')
        return

    if not args.checkpoint:
        parser.error('--checkpoint is required with a config file')
    from mmcluster.apis import build_model, load_config, prepare_image

    model = build_model(load_config(args.model, args.cfg_options), args.checkpoint, args.device)
    for image_path in args.images:
        inputs, rgb = prepare_image(model, image_path)
        try:
            layers, names = detector_or_segmentor_layers(model, inputs)
        except NoClusterMapsError as error:
            parser.error(f'{args.model}: {error}')
        stem = osp.join(args.out_dir, osp.splitext(osp.basename(image_path))[0])
        out = save_heatmap_grid(
            rgb, layers, f'{stem}_clusters.png', args.num_clusters, title=osp.basename(image_path), cluster_names=names
        )
        print(f'wrote {out}')
        save_cluster_id_figure(rgb, layers, f'{stem}_cluster_ids.png', title=osp.basename(image_path))
        if args.all_clusters:
            for name, layer_logits in layers.items():
                save_all_clusters(rgb, layer_logits, f'{stem}_{name.replace(".", "-")}_all.png', title=name)


if __name__ == '__main__':
    main()
