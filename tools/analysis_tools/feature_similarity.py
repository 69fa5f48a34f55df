"""Cosine similarity of an Expedite model's reconstructed features to the original model's (the Expedite paper's
Table 1: cos(Z_{alpha+beta}, Z^original_{alpha+beta}) for every block alpha + beta after the clustering).

    # Segmenter ViT-L/16 on ADE20K, alpha = 10 (the config's), on some validation images
    python tools/analysis_tools/feature_similarity.py \
        configs/expedite/segmenter_vit-l-hourglass-28x28_mask_8xb1-160k_ade20k-640x640.py \
        data/ade/ADEChallengeData2016/images/validation/ADE_val_0000000{1,2,3}.jpg --json sim.json \
        --checkpoint segmenter_vit-l_mask_8x1_512x512_160k_ade20k_20220105_162750-7ef345be.pth
    # other alphas (clustering after block alpha), a 480 x 480 input, random weights and a random input
    python tools/analysis_tools/feature_similarity.py \
        configs/expedite/segmenter_vit-l-hourglass-28x28_mask_8xb1-160k_ade20k-640x640.py --alpha 6 10 14 \
        --shape 480 480

CONFIG is an mmseg or mmdet config whose backbone implements the hourglass protocol of
mmcluster/models/backbones/expedite.py (the Expedite ViT and Swin wrappers): ``hourglass_blocks()`` (the blocks
that run on the cluster centres), ``patch_tokens(output)`` (a block's output of the last forward as full-resolution
patch tokens, reconstructed with that forward's clusters), ``full_resolution()`` (a context in which the forward
is the upstream, unclustered backbone's) and ``cluster_after`` (the 0-based index of the block after which the
tokens are clustered: alpha = cluster_after + 1).

For each alpha the backbone runs twice on every image, in eval mode: inside ``full_resolution()`` (the original
features Z^original) and with the clustering (the reconstructed features Z). Every hourglass block's output is
taken, turned into (H*W, C) patch tokens with ``patch_tokens``, and compared token by token along the channels.
The table gives, per block, its position alpha + beta (alpha + 1 for the first block after the clustering; the
block index + 1 for ViT), and the mean and the minimum of the cosine similarity over all images and tokens;
--json writes the same rows. The weights of every alpha are the same: --checkpoint (a checkpoint of the
config's whole model, read without unpickling anything but tensors), or random ones drawn with --seed
(then the numbers say nothing about the paper's; the tool says so).

Images are read as the model reads them (BGR, converted and normalised as the config's data preprocessor does)
and resized to --shape H W without keeping the aspect ratio; without images, one random normal input of --shape
is used. The default shape is the config's test crop size. A cluster grid as large as the token grid (or larger:
it is then reduced to it) clusters nothing, and every similarity is 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config, DictAction

import mmcluster  # noqa: F401  (registers the models)

PROTOCOL = ('hourglass_blocks', 'patch_tokens', 'full_resolution')


class HourglassProtocolError(TypeError):
    """A backbone without the hourglass protocol (or one whose blocks do not behave as it says)."""


def check_hourglass_backbone(backbone: torch.nn.Module) -> None:
    missing = [name for name in PROTOCOL if not callable(getattr(backbone, name, None))]
    if missing or not hasattr(backbone, 'clusters'):
        missing += [] if hasattr(backbone, 'clusters') else ['clusters']
        raise HourglassProtocolError(
            f'{type(backbone).__name__} does not implement the hourglass protocol (it lacks {", ".join(missing)}): '
            'use a config with an Expedite backbone, e.g. configs/expedite/'
        )


def _capture(blocks: Sequence[tuple[str, torch.nn.Module]]):
    """Forward hooks on ``blocks`` recording each one's output and how often it ran; returns (outputs, calls,
    handles)."""
    outputs: dict = {}
    calls: dict = {name: 0 for name, _ in blocks}

    def hook(name):
        def record(module, args, output):
            outputs[name] = output
            calls[name] += 1

        return record

    handles = [block.register_forward_hook(hook(name)) for name, block in blocks]
    return outputs, calls, handles


def _run(backbone, inputs: torch.Tensor, blocks, outputs: dict, calls: dict) -> 'OrderedDict[str, torch.Tensor]':
    """One forward of ``backbone``; every block's output as patch tokens (converted right after the forward,
    whose clusters they belong to)."""
    outputs.clear()
    for name in calls:
        calls[name] = 0
    backbone(inputs)
    ran_otherwise = {name: count for name, count in calls.items() if count != 1}
    if ran_otherwise:
        raise HourglassProtocolError(
            f'{type(backbone).__name__}: every block of hourglass_blocks() must run once per forward, but '
            + ', '.join(f'{name} ran {count} times' for name, count in ran_otherwise.items())
        )
    return OrderedDict((name, backbone.patch_tokens(outputs[name])) for name, _ in blocks)


@torch.no_grad()
def block_features(
    backbone: torch.nn.Module, inputs: torch.Tensor
) -> tuple['OrderedDict[str, torch.Tensor]', 'OrderedDict[str, torch.Tensor]']:
    """(originals, reconstructed): hourglass block name -> its output on ``inputs`` (B, 3, H, W) as (B, H*W, C)
    patch tokens, from the upstream forward (inside ``full_resolution()``) and from the clustered one. The
    backbone is put in eval mode."""
    check_hourglass_backbone(backbone)
    backbone.eval()
    blocks = list(backbone.hourglass_blocks())
    if not blocks:
        raise HourglassProtocolError(f'{type(backbone).__name__}.hourglass_blocks() is empty')
    outputs, calls, handles = _capture(blocks)
    try:
        with backbone.full_resolution():
            originals = _run(backbone, inputs, blocks, outputs, calls)
        reconstructed = _run(backbone, inputs, blocks, outputs, calls)
    finally:
        for handle in handles:
            handle.remove()
    for name, original in originals.items():
        if reconstructed[name].shape != original.shape:
            raise HourglassProtocolError(
                f'{name}: patch_tokens gives {tuple(reconstructed[name].shape)} after the clustering but '
                f'{tuple(original.shape)} at full resolution'
            )
    return originals, reconstructed


def _grids(clusters) -> Optional[tuple[tuple, tuple]]:
    """(token grid, cluster grid) of the last forward's clusters where they say (the ViT wrapper's do)."""
    grid, cluster_grid = getattr(clusters, 'grid', None), getattr(clusters, 'cluster_grid', None)
    if grid is None or cluster_grid is None:
        return None
    return tuple(grid), tuple(cluster_grid)


@torch.no_grad()
def feature_similarity(backbone: torch.nn.Module, images: Iterable[torch.Tensor], alpha: int) -> dict:
    """Per hourglass block of ``backbone``, the cosine similarity along the channels between its reconstructed
    and its original patch tokens, over every token of every image (each a (B, 3, H, W) batch, run as one
    forward). ``alpha`` numbers the blocks: position p (0-based) of ``hourglass_blocks()`` is alpha + beta =
    alpha + 1 + p.

    Returns ``{'alpha', 'grids', 'rows'}``: ``grids`` the (token grid, cluster grid) of the last image where the
    clusters tell them (else None); ``rows`` one dict per block: ``alpha``, ``block``, ``alpha_beta``,
    ``mean``, ``min`` and ``tokens`` (the number of tokens compared)."""
    check_hourglass_backbone(backbone)
    names = [name for name, _ in backbone.hourglass_blocks()]
    totals = {name: 0.0 for name in names}
    minima = {name: float('inf') for name in names}
    counts = {name: 0 for name in names}
    grids = None
    for inputs in images:
        originals, reconstructed = block_features(backbone, inputs)
        grids = _grids(backbone.clusters)
        for name, original in originals.items():
            cos = F.cosine_similarity(reconstructed[name].double(), original.double(), dim=-1)
            totals[name] += float(cos.sum())
            minima[name] = min(minima[name], float(cos.min()))
            counts[name] += cos.numel()
    if not any(counts.values()):
        raise ValueError('no image to compare features on')
    rows = [
        dict(
            alpha=alpha,
            block=name,
            alpha_beta=alpha + 1 + position,
            mean=totals[name] / counts[name],
            min=minima[name],
            tokens=counts[name],
        )
        for position, name in enumerate(names)
    ]
    return dict(alpha=alpha, grids=grids, rows=rows)


# --------------------------------------------------------------------------------------------------- inputs


def default_shape(cfg: Config) -> Optional[tuple[int, int]]:
    """The config's test input size: the slide-inference crop, else the data preprocessor's size, else the
    config's ``crop_size``; None if none is given."""
    model = cfg.get('model', {})
    for candidate in (
        (model.get('test_cfg') or {}).get('crop_size'),
        (model.get('data_preprocessor') or {}).get('size'),
        cfg.get('crop_size'),
    ):
        if candidate is not None and len(candidate) == 2:
            return int(candidate[0]), int(candidate[1])
    return None


def _preprocess(image: torch.Tensor, preprocessor) -> torch.Tensor:
    """A (3, H, W) BGR float image as the model's data preprocessor gives it: channels converted to RGB if it
    does so, then normalised with its mean and std if it normalises (mmengine's ImgDataPreprocessor)."""
    if getattr(preprocessor, '_channel_conversion', False):
        image = image[[2, 1, 0]]
    if getattr(preprocessor, '_enable_normalize', False):
        image = (image - preprocessor.mean.cpu()) / preprocessor.std.cpu()
    return image


def load_image(path: str, shape: tuple[int, int], preprocessor) -> torch.Tensor:
    """The image file ``path`` as a (1, 3, H, W) network input of ``shape`` (resized, aspect ratio not kept)."""
    import mmcv

    if not os.path.isfile(path):
        raise FileNotFoundError(f'image {path} does not exist')
    image = mmcv.imread(path)  # BGR, as the test pipeline's LoadImageFromFile
    if image is None:
        raise ValueError(f'{path} is not an image that OpenCV can read')
    image = mmcv.imresize(image, (shape[1], shape[0]), interpolation='bilinear')
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    return _preprocess(tensor, preprocessor)[None]


def random_input(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """A (1, 3, H, W) standard normal input (already normalised), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, *shape, generator=generator)


# --------------------------------------------------------------------------------------------------- models


def build_reference(cfg: Config, checkpoint: Optional[str], device: str, seed: int) -> torch.nn.Module:
    """The config's whole model in eval mode: ``checkpoint`` loaded (it must fit the model exactly), or random
    weights drawn after ``torch.manual_seed(seed)`` (no pretrained backbone downloaded)."""
    from mmcluster.apis import build_model

    cfg = copy.deepcopy(cfg)
    if checkpoint is None:
        torch.manual_seed(seed)
        if 'pretrained' in cfg.model:
            cfg.model.pretrained = None
        if 'backbone' in cfg.model:
            cfg.model.backbone.init_cfg = None
            if 'pretrained' in cfg.model.backbone:
                cfg.model.backbone.pretrained = None
        with _quiet_mmengine():  # init_weights logs every tensor's initialisation
            return build_model(cfg, None, device)
    return build_model(cfg, checkpoint, device)


@contextmanager
def _quiet_mmengine():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def config_alpha(cfg: Config) -> int:
    backbone = cfg.model.get('backbone') or {}
    if 'cluster_after' not in backbone:
        raise HourglassProtocolError(
            f'the backbone of the config ({backbone.get("type")}) has no cluster_after: not an Expedite backbone'
        )
    return int(backbone.cluster_after) + 1


def hourglass_backbone(cfg: Config, alpha: int, state_dict: dict, device: str = 'cpu') -> torch.nn.Module:
    """The config's backbone with ``cluster_after = alpha - 1`` (its constructor checks it: ValueError or
    TypeError), in eval mode, with ``state_dict`` (the reference backbone's: the hourglass adds no tensor)."""
    from mmengine.registry import MODELS

    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.update(cluster_after=alpha - 1, init_cfg=None)
    if 'pretrained' in backbone_cfg:
        backbone_cfg.pretrained = None
    backbone = MODELS.build(backbone_cfg)
    check_hourglass_backbone(backbone)
    backbone.load_state_dict(state_dict, strict=True)
    backbone.to(device)
    backbone.eval()  # not chained: mmseg's VisionTransformer.train returns None
    return backbone


# --------------------------------------------------------------------------------------------------- output


def format_report(result: dict) -> str:
    lines = [
        f'config  : {result["config"]}',
        f'weights : {result["weights"]}',
        f'inputs  : {result["inputs"]}',
    ]
    for run in result['alphas']:
        grids = run['grids']
        where = ''
        if grids is not None:
            (H, W), (h, w) = grids
            where = f', {H}x{W} tokens -> {h}x{w} clusters' + (' (nothing clustered)' if (H, W) == (h, w) else '')
        lines += ['', f'alpha = {run["alpha"]} (cluster_after = {run["alpha"] - 1}{where})']
        width = max([len('block')] + [len(row['block']) for row in run['rows']])
        lines.append(f'  {"block":{width}s}  alpha+beta  mean cos  min cos')
        for row in run['rows']:
            lines.append(f'  {row["block"]:{width}s}  {row["alpha_beta"]:10d}  {row["mean"]:8.4f}  {row["min"]:7.4f}')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmseg / mmdet config with an Expedite (hourglass) backbone')
    parser.add_argument('images', nargs='*', help='image files (default: one random normal input)')
    parser.add_argument('--checkpoint', help="weights of the config's model (default: random, drawn with --seed)")
    parser.add_argument(
        '--alpha',
        type=int,
        nargs='+',
        help="cluster after block alpha (1-based; alpha = cluster_after + 1). Default: the config's",
    )
    parser.add_argument(
        '--shape', type=int, nargs='+', help="input height and width (one number: square). Default: the config's crop"
    )
    parser.add_argument('--seed', type=int, default=0, help='for random weights and the random input')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)

    from mmcluster.apis import load_config
    from mmcluster.utils.checkpoint import CheckpointError

    if not os.path.isfile(args.config) and '::' not in args.config:
        parser.error(f'config file {args.config} does not exist')
    try:
        cfg = load_config(args.config, args.cfg_options)
        reference_alpha = config_alpha(cfg)
        alphas = args.alpha or [reference_alpha]
    except (ValueError, HourglassProtocolError) as error:
        parser.error(f'{args.config}: {error}')
    if args.shape is not None:
        if len(args.shape) not in (1, 2) or min(args.shape) < 1:
            parser.error(f'--shape takes H W or one size, each >= 1; got {args.shape}')
        shape = tuple((args.shape * 2)[:2])
    else:
        shape = default_shape(cfg)
        if shape is None:
            parser.error(f'--shape is required: {args.config} names no test crop size')
    if args.checkpoint is not None and '://' not in args.checkpoint and not os.path.isfile(args.checkpoint):
        parser.error(f'--checkpoint: checkpoint {args.checkpoint} does not exist')
    for path in args.images:
        if not os.path.isfile(path):
            parser.error(f'image {path} does not exist')

    try:
        model = build_reference(cfg, args.checkpoint, args.device, args.seed)
    except (FileNotFoundError, CheckpointError) as error:
        parser.error(f'--checkpoint: {error}')
    state_dict = model.backbone.state_dict()
    preprocessor = model.data_preprocessor
    try:
        check_hourglass_backbone(model.backbone)
    except HourglassProtocolError as error:
        parser.error(f'{args.config}: {error}')
    for alpha in alphas:  # every alpha checked (by the backbone's constructor) before anything runs
        if alpha != reference_alpha:
            try:
                hourglass_backbone(cfg, alpha, state_dict)
            except (ValueError, TypeError) as error:
                parser.error(f'--alpha {alpha} (cluster_after = {alpha - 1}): {error}')
    reference = model.backbone
    del model

    try:
        images = [load_image(path, shape, preprocessor) for path in args.images]
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if not images:
        images = [random_input(shape, args.seed)]
    images = [image.to(args.device) for image in images]

    result = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        weights=args.checkpoint
        or f'random (seed {args.seed}): no --checkpoint, so the numbers are not those of a trained model',
        inputs=(
            f'{len(args.images)} image(s) resized to {shape[0]}x{shape[1]}'
            if args.images
            else f'one random normal input of {shape[0]}x{shape[1]} (seed {args.seed}): no image given'
        ),
        images=list(args.images),
        shape=list(shape),
        alphas=[],
        rows=[],
    )
    for alpha in alphas:
        backbone = reference if alpha == reference_alpha else hourglass_backbone(cfg, alpha, state_dict, args.device)
        run = feature_similarity(backbone, images, alpha)
        del backbone  # one extra backbone in memory at a time
        result['alphas'].append(run)
        result['rows'].extend(run['rows'])
    print(format_report(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'wrote {args.json}')
    return result


if __name__ == '__main__':
    main()
