"""Building an mmdet/mmseg model from a config and checkpoint, and preparing its inputs, for the tools."""

from __future__ import annotations

import copy
import os
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.utils import import_modules_from_strings


def package_config_path(config: str) -> str:
    """The file of a config named as ``_base_`` names them, ``mmdet::path`` or ``mmseg::path`` (the configs
    shipped inside those packages, e.g. the upstream config of an expedited one); other paths unchanged."""
    if '::' not in config:
        return config
    import importlib
    import os

    scope, relative = config.split('::', 1)
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f"{config}: only 'mmdet::' and 'mmseg::' configs can be named this way")
    path = os.path.join(os.path.dirname(importlib.import_module(scope).__file__), '.mim', 'configs', relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{config}: no such config in the installed {scope} ({path})')
    return path


def load_config(config: str | Config, cfg_options: Optional[dict] = None) -> Config:
    """A det / seg config (a file, ``mmdet::path`` / ``mmseg::path``, or a Config, copied) with the options
    merged, its default scope set and its custom imports done."""
    cfg = Config.fromfile(package_config_path(config)) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope') not in ('mmdet', 'mmseg'):
        raise ValueError(f"{config}: default_scope must be 'mmdet' or 'mmseg', got {cfg.get('default_scope')!r}")
    init_default_scope(cfg.default_scope)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    return cfg


def build_model(cfg: Config, checkpoint: Optional[str] = None, device: str = 'cpu') -> nn.Module:
    """The config's model in eval mode, with ``checkpoint`` loaded (no pretrained download of the backbone).

    ``checkpoint`` (a path, URL or mmengine scheme) is read by
    :func:`~mmcluster.utils.checkpoint.load_checkpoint_file` (``weights_only=True``) and must fit the model
    exactly: otherwise :class:`~mmcluster.utils.checkpoint.CheckpointMismatchError` lists the shape
    mismatches, missing and unexpected keys (a checkpoint of another model would otherwise leave the model
    half-initialised and draw nonsense)."""
    from mmcluster.utils.checkpoint import check_checkpoint_fits, load_checkpoint_file

    model_cfg = copy.deepcopy(cfg.model)
    if checkpoint is not None and 'backbone' in model_cfg:
        model_cfg.backbone.init_cfg = None
    model = MODELS.build(model_cfg)
    if checkpoint is not None:
        checkpoint_data = load_checkpoint_file(
            checkpoint, map_location='cpu', hint='Pass the path of a local copy as the checkpoint instead.'
        )
        state_dict = check_checkpoint_fits(model, checkpoint_data, str(checkpoint))
        model.load_state_dict(state_dict, strict=False)  # fits: at most BatchNorm's num_batches_tracked are absent
        meta = checkpoint_data.get('meta', {})
        if 'dataset_meta' in meta:
            model.dataset_meta = meta['dataset_meta']
    else:
        model.init_weights()
    model = revert_sync_batchnorm(model).to(device).eval()
    model.cfg = cfg
    return model


def tensor_forward(model: nn.Module, default_scope: str):
    """``images -> model(images, samples, mode='tensor')`` for an mmdet / mmseg model: the raw outputs of
    backbone, neck and heads (what mmdet's and mmseg's ``get_flops`` run). A two-stage detector gets the
    minimal test-time data samples it needs for its proposals."""
    if default_scope != 'mmdet':
        return lambda images: model(images, mode='tensor')
    from mmdet.structures import DetDataSample

    def forward(images: torch.Tensor):
        shape = tuple(images.shape[-2:])
        samples = [
            DetDataSample(
                metainfo=dict(
                    img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1.0, 1.0)
                )
            )
            for _ in range(images.shape[0])
        ]
        return model(images, samples, mode='tensor')

    return forward


def test_pipeline(cfg: Config) -> Compose:
    """The config's test pipeline without annotation loading (for images without labels)."""
    steps = [step for step in cfg.test_dataloader.dataset.pipeline if 'LoadAnnotations' not in step['type']]
    return Compose(steps)


def prepare_image(model: nn.Module, image_path: str) -> tuple[torch.Tensor, np.ndarray]:
    """The normalised, padded network input (1, 3, H, W) for an image file, and the same image as RGB uint8.

    Raises FileNotFoundError or ValueError naming ``image_path`` when it does not exist or is not an image."""
    import mmcv

    if not os.path.isfile(image_path):
        raise FileNotFoundError(f'image {image_path} does not exist')
    if mmcv.imread(image_path) is None:
        raise ValueError(f'{image_path} is not an image that OpenCV can read')
    packed = test_pipeline(model.cfg)(dict(img_path=image_path, img_id=0))
    batch = model.data_preprocessor(pseudo_collate([packed]), False)
    inputs = batch['inputs']
    preprocessor: Any = model.data_preprocessor
    rgb = inputs[0] * preprocessor.std + preprocessor.mean
    return inputs, rgb.permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy()
