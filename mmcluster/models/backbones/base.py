"""The contracts that every hierarchical backbone family of mmcluster implements once.

* :class:`HierarchicalViT` is timm's model interface for a four-stage network with maps at strides
  4, 8, 16 and 32 (the layout of timm's ``pvt_v2.py``): ``forward_features`` / ``forward_head``,
  ``forward_intermediates`` and ``prune_intermediate_layers`` (so ``features_only=True`` works through
  timm's ``FeatureGetterNet``), ``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher``,
  ``no_weight_decay``, ``feature_info``. It needs torch only.
* :class:`BackboneContract` adds what mmdet's and mmseg's backbones mean by ``out_indices``,
  ``frozen_stages``, ``norm_eval``, ``with_cp`` and ``init_cfg``. mmengine is imported only when a
  checkpoint is loaded, so the module stays importable without the OpenMMLab stack.
* The cluster-map protocol that the tools use (``visualize_clusters.py``, ``check_amp.py``):
  ``cluster_maps(x)`` returns every clustering layer's map as (B, M, h, w) keyed by the layer's name, and
  ``fp32_modules()`` names the modules whose floating-point outputs must stay fp32 under autocast.

A family builds ``patch_embed`` and ``stages`` (each stage a module with a ``grad_checkpointing`` flag,
taking the previous stage's map plus the keyword inputs of :meth:`HierarchicalViT.stage_inputs`) and calls
:meth:`HierarchicalViT.init_classifier`.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import contiguous_nchw

GLOBAL_POOLS = ('avg', '')


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as a Python int (numpy integers included) if it is an integer >= ``minimum``, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f'{name} must be a number in [0, 1), got {value!r}')
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a positive real number (not a bool), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(f'{name} must be a positive number, got {value!r}')
    return float(value)


def _is_sequence(value: Any) -> bool:
    """A list, tuple, 1-d numpy array or similar; not a string, a mapping or a scalar."""
    return (
        not isinstance(value, (str, bytes, Mapping))
        and isinstance(value, Iterable)
        and getattr(value, 'ndim', 1) == 1
        and hasattr(value, '__len__')
    )


def check_per_stage(name: str, value: Any, num_stages: int, minimum: int) -> tuple[int, ...]:
    """A sequence of ``num_stages`` integers >= ``minimum`` (numpy integers accepted), as a tuple of ints."""
    if not _is_sequence(value) or len(value) != num_stages:
        raise ValueError(f'{name} must be a sequence with one integer per stage ({num_stages}), got {value!r}')
    try:
        return tuple(check_int(name, v, minimum) for v in value)
    except ValueError:
        raise ValueError(f'{name} must hold integers >= {minimum}, got {value!r}') from None


def check_indices(name: str, value: Any, num_stages: int) -> tuple[int, ...]:
    """Stage indices as mmdet backbones take them: a non-empty sequence of distinct ints in [0, num_stages)."""
    if not _is_sequence(value):
        raise ValueError(f'{name} must be a sequence of stage indices, e.g. (0, 1, 2, 3); got {value!r}')
    indices = []
    for i in value:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise ValueError(f'{name} must hold stage indices (integers), got {value!r}')
        indices.append(int(i))
    if not indices or len(set(indices)) != len(indices) or any(not 0 <= i < num_stages for i in indices):
        raise ValueError(f'{name} must hold distinct stage indices in [0, {num_stages}), got {value!r}')
    return tuple(indices)


class HierarchicalViT(nn.Module):
    """timm's classifier interface for a hierarchical ViT with ``len(self.stages)`` stages.

    Subclasses set ``patch_embed``, ``stages`` and ``embed_dims`` and call :meth:`init_classifier`.
    """

    patch_embed: nn.Module
    stages: nn.ModuleList
    embed_dims: tuple[int, ...]
    stem_pattern = r'^patch_embed'  # parameters of the stem, for group_matcher (layer-wise lr decay)

    # -- construction -------------------------------------------------------------------------------

    def init_classifier(self, num_classes: int, global_pool: str = 'avg', drop_rate: float = 0.0) -> None:
        """The pooled linear classifier and ``feature_info``; call at the end of the subclass's ``__init__``."""
        self.num_classes = check_int('num_classes', num_classes, 0)
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}')
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.head_drop = nn.Dropout(check_rate('drop_rate', drop_rate))
        self.head = self._classifier(self.num_classes)
        self.feature_info = [
            dict(num_chs=c, reduction=4 * 2**i, module=f'stages.{i}') for i, c in enumerate(self.embed_dims)
        ]
        self.grad_checkpointing = False

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        self.init_module(head)
        return head

    def init_module(self, module: nn.Module) -> None:
        """The family's initialisation of one module (applied to every module by :meth:`reset_parameters`)."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initialise every weight from scratch, as the family's official code does."""
        self.apply(self.init_module)

    # -- forward ------------------------------------------------------------------------------------

    def stage_inputs(self, stem: torch.Tensor) -> list[dict]:
        """Extra keyword inputs of each stage, computed from the stem output (none by default)."""
        return [{} for _ in self.stages]

    def forward_stages(self, x: torch.Tensor, num_stages: Optional[int] = None) -> list[torch.Tensor]:
        """The outputs (B, C_i, H_i, W_i) of the first ``num_stages`` stages (all by default), any input size."""
        x = self.patch_embed(x)
        stages = self.stages if num_stages is None else self.stages[:num_stages]
        outs = []
        for stage, inputs in zip(stages, self.stage_inputs(x)):
            x = stage(x, **inputs)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's ``forward_intermediates``: the stage maps selected by ``indices`` (the last n stages if an
        int, all if None) and, unless ``intermediates_only``, the final map. The stage maps are the stage
        outputs themselves, so ``norm`` changes nothing."""
        from timm.models._features import feature_take_indices

        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        outs = self.forward_stages(x, max_index + 1 if stop_early or intermediates_only else None)
        intermediates = [outs[i] for i in take]
        return intermediates if intermediates_only else (outs[-1], intermediates)

    def prune_intermediate_layers(
        self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one ``indices`` selects (and the classifier); returns the indices."""
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:
            self.stages = self.stages[: max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.reset_classifier(0, '')
        return take

    # -- timm's model interface ---------------------------------------------------------------------

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = check_int('num_classes', num_classes, 0)
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}')
            self.global_pool = global_pool
        self.head = self._classifier(self.num_classes)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block (recomputed in the backward pass)."""
        self.grad_checkpointing = bool(enable)
        for stage in self.stages:
            stage.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        blocks = (
            r'^stages\.(\d+)'
            if coarse
            else [(r'^stages\.(\d+)\.blocks\.(\d+)', None), (r'^stages\.(\d+)\.(?:downsample|norm)', (99999,))]
        )
        return dict(stem=self.stem_pattern, blocks=blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    # -- the cluster-map protocol -------------------------------------------------------------------

    def forward_capturing(
        self,
        x: torch.Tensor,
        modules: dict[str, nn.Module],
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """The stage outputs for ``x`` and the outputs of ``modules`` (by name) during that forward pass, for
        the families' ``cluster_maps``. A module that did not run has no entry."""
        captured: dict[str, Any] = {}
        handles = [
            module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
            for name, module in modules.items()
        ]
        try:
            outs = self.forward_stages(x)
        finally:
            for handle in handles:
                handle.remove()
        return outs, captured

    def cluster_maps(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        """Every clustering layer's map for input ``x``, (B, M, h, w), keyed by the layer's name."""
        raise NotImplementedError

    def fp32_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of the modules whose floating-point outputs must be fp32 under autocast: those whose
        class sets ``fp32_output = True`` (e.g. the soft assignment over tokens)."""
        return ((name, m) for name, m in self.named_modules() if getattr(type(m), 'fp32_output', False))


class BackboneContract:
    """mmdet / mmseg backbone behaviour for a :class:`HierarchicalViT` subclass (mix in first).

    * ``out_indices``: the stages whose maps ``forward`` returns, as a list of contiguous NCHW tensors.
    * ``frozen_stages``: as in mmdet's Swin, PVT and ResNet: -1 freezes nothing, 0 the stem (patch
      embedding) only, k the stem and the first k stages (parameters without gradients, modules in eval).
    * ``norm_eval``: BatchNorm layers stay in eval mode while training.
    * ``with_cp``: activation checkpointing of every block.
    * ``init_cfg``: ``dict(type='Pretrained', checkpoint=..., prefix=None)``, loaded by
      :meth:`init_weights` through mmcluster's strict loader with the family's converter.
    * ``pretrained``: mmseg's deprecated argument (its segmentor bases set a ResNet checkpoint there): used
      as the checkpoint when ``init_cfg`` has none; with an ``init_cfg`` checkpoint it is ignored, with a
      warning that names it.

    Class attributes: ``family`` (below); ``arch_zoo``, the family's arch table (arch name -> settings; the
    class accepts ``arch=<name>``), from which ``tools/analysis_tools/benchmark.py`` makes one preset per
    arch, named ``<preset_prefix>-<arch>`` with ``_`` written ``-`` (``preset_prefix`` defaults to
    ``family``), e.g. ``paca-small-teacher``.
    """

    family: str  # key of the family's converter in mmcluster.models.conversion
    classifier_prefixes: tuple[str, ...] = ('head.',)  # checkpoint keys of the classifier, not loaded
    out_indices: tuple[int, ...]

    def init_backbone(
        self,
        out_indices: Sequence[int],
        frozen_stages: int,
        norm_eval: bool,
        with_cp: bool,
        init_cfg: Optional[dict],
        pretrained: Optional[str],
    ) -> None:
        num_stages = len(self.stages)
        self.out_indices = check_indices('out_indices', out_indices, num_stages)
        self.frozen_stages = check_int('frozen_stages', frozen_stages, -1)
        if self.frozen_stages > num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages!r}')
        self.norm_eval = bool(norm_eval)
        self.with_cp = bool(with_cp)
        if init_cfg is not None:
            if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained' or 'checkpoint' not in init_cfg:
                raise ValueError(
                    f"{type(self).__name__} init_cfg must be dict(type='Pretrained', checkpoint=..., "
                    f'prefix=None), got {init_cfg!r}'
                )
            unknown = set(init_cfg) - {'type', 'checkpoint', 'prefix'}
            if unknown:
                raise ValueError(f'init_cfg has unknown keys {sorted(unknown)}')
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise ValueError(f'pretrained must be a checkpoint path or URL, got {pretrained!r}')
            if init_cfg is None:
                init_cfg = dict(type='Pretrained', checkpoint=pretrained)
            else:
                import warnings

                warnings.warn(
                    f"{type(self).__name__}: ignoring pretrained={pretrained!r} (mmseg's deprecated "
                    f'argument, set by its segmentor base configs) because init_cfg names the '
                    f'checkpoint {init_cfg["checkpoint"]!r}',
                    stacklevel=2,
                )
        self.init_cfg = init_cfg
        self._is_init = False
        self.set_grad_checkpointing(self.with_cp)
        self._freeze_stages()

    @property
    def is_init(self) -> bool:
        return self._is_init

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.forward_stages(x, max(self.out_indices) + 1)
        # Contiguous NCHW, not a channels-last view: mmcv 2.1.0's compiled RoIAlign reads channels-last
        # input as if it were NCHW (wrong RoI features). Copied band by band on CPUs (contiguous_nchw).
        return [contiguous_nchw(outs[i]) for i in self.out_indices]

    # -- training mode ------------------------------------------------------------------------------

    def stage_modules(self, index: int) -> list[nn.Module]:
        """The modules that belong to stage ``index`` (frozen with it)."""
        return [self.stages[index]]

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        for i in range(self.frozen_stages):
            frozen += self.stage_modules(i)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # -- weights ------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Initialise from scratch, then load ``init_cfg``'s checkpoint (if any) over it.

        Loading happens here, after the initialisation, so that mmengine's Runner (which calls
        ``init_weights`` before training) cannot overwrite pretrained weights. Official checkpoints are
        converted by the family's converter; tensors whose shape depends on a setting that downstream
        configs change (e.g. the number of clusters) keep their fresh initialisation, and the log names
        them. Anything else that does not fit is an error.
        """
        from mmengine.logging import MMLogger

        from mmcluster.models.conversion import get_converter
        from mmcluster.utils.checkpoint import load_pretrained

        self.reset_parameters()
        if self.init_cfg is not None:
            converter = get_converter(self.family)
            load_pretrained(
                self,
                self.init_cfg['checkpoint'],
                prefix=self.init_cfg.get('prefix'),
                convert=converter.convert_backbone,
                may_reinit=converter.may_reinit,
                ignore_unexpected=self.classifier_prefixes,
                logger=MMLogger.get_current_instance(),
            )
        self._is_init = True
        self._freeze_stages()


# ---------------------------------------------------------------------------------------------------
# timm entry points


def create_timm_model(cls: type, variant: str, pretrained: bool, family: str, **kwargs) -> nn.Module:
    """Build ``cls`` through timm's ``build_model_with_cfg`` (so ``pretrained_cfg``, ``features_only`` and
    ``out_indices`` behave as for timm's own models) and, with ``pretrained``, load the weights that the
    model's pretrained config names (``file`` before ``url``, as timm orders them) through mmcluster's safe
    loader and the family's converter."""
    from timm.models import build_model_with_cfg

    out_indices = kwargs.pop('out_indices', tuple(range(4)))
    model = build_model_with_cfg(
        cls, variant, pretrained=False, feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs
    )
    if pretrained:
        network = model.model if kwargs.get('features_only') else model
        load_timm_pretrained(network, variant, family)
    return model


def load_timm_pretrained(model: HierarchicalViT, variant: str, family: str) -> None:
    """Load ``model.pretrained_cfg``'s weights (official layout converted) into ``model``.

    The checkpoint must supply every tensor of the model; it may have more only where the model was cut
    short (a classifier of another size, or stages pruned by ``features_only``)."""
    from mmcluster.models.conversion import get_converter
    from mmcluster.utils.checkpoint import extract_state_dict, load_checkpoint_file

    cfg = dict(model.pretrained_cfg or {})
    location = cfg.get('file') or cfg.get('url')
    if not location:
        raise RuntimeError(
            f'{variant}: no pretrained weights are published for this model; load your own with '
            f"timm.create_model('{variant}', pretrained=True, "
            "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth'))"
        )
    hint = (
        f"to load a local copy instead: timm.create_model('{variant}', pretrained=True, "
        "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth'))"
    )
    state_dict = get_converter(family).convert_backbone(extract_state_dict(load_checkpoint_file(location, hint=hint)))
    own = model.state_dict()
    kept_stages = len(model.stages)
    droppable = ('head.',) + tuple(f'stages.{i}.' for i in range(kept_stages, 16))
    head_fits = all(k in state_dict and state_dict[k].shape == v.shape for k, v in own.items() if k.startswith('head.'))
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if k in own or not k.startswith(droppable))
    if not head_fits or not any(k.startswith('head.') for k in own):
        state_dict = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith('head.'))
        own_head = {k: v for k, v in own.items() if k.startswith('head.')}
        state_dict.update(own_head)  # a classifier of another size keeps its fresh initialisation
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f'{variant}: the checkpoint {location} does not fit the model: {error}') from None
