"""A toy clustering family, written here and nowhere in mmcluster, that implements only the contracts of
mmcluster/models/backbones/base.py: the timm interface (HierarchicalViT), the mmdet / mmseg backbone
contract (BackboneContract, with an ``arch_zoo``) and the cluster-map protocol (``cluster_maps``,
``fp32_modules``). The analysis tools must handle it as they handle PaCa-ViT, without knowing it.

Its assignment softmax (:class:`ToyAssign`) deliberately lacks the ``fp32_output`` marker of mmcluster's
SoftAssignment: the tools can only find it through ``fp32_modules()``. ``assign_dtype=torch.float16``
makes it return fp16, the fault that check_amp.py must catch.
"""

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn
from timm.models import register_model
from torch.utils.checkpoint import checkpoint

from mmcluster.models.backbones.base import BackboneContract, HierarchicalViT
from mmcluster.models.conversion import FamilyConverter, RuleTable

# embed dims and clusters per stage (0: no clustering in that stage)
TOY_ARCHS = {
    'mini': dict(embed_dims=(8, 16, 24, 32), clusters=(4, 4, 3, 0)),
    'wide_teacher': dict(embed_dims=(16, 16, 32, 32), clusters=(5, 5, 5, 5)),
}
OFFICIAL_PREFIX = 'toy_official.'  # the toy family's "official" checkpoint layout: our keys with this prefix
TOY_CONVERTER = FamilyConverter(
    family='toy',
    is_official=lambda state_dict: any(k.startswith(OFFICIAL_PREFIX) for k in state_dict),
    backbone=RuleTable('official toy', [(r'^toy_official\.', '')]),
)


class ToyAssign(nn.Module):
    """Softmax of assignment logits (B, M, N) over the tokens, in fp32 (or ``out_dtype``)."""

    def __init__(self, out_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.out_dtype = out_dtype

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        weights = logits.float().softmax(dim=-1)
        return weights if self.out_dtype is None else weights.to(self.out_dtype)


class ToyStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, clusters: int, stride: int, assign_dtype=None) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_dim, dim, stride, stride=stride)
        self.to_clusters = nn.Conv2d(dim, clusters, 1) if clusters else None
        self.assign = ToyAssign(assign_dtype) if clusters else None
        self.mix = nn.Linear(dim, dim)
        self.grad_checkpointing = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if self.to_clusters is not None:
            weights = self.assign(self.to_clusters(x).flatten(2))  # (B, M, N)
            centers = weights.to(tokens.dtype) @ tokens  # (B, M, C)
            attention = (tokens @ centers.transpose(1, 2)).softmax(dim=-1)  # (B, N, M)
            tokens = tokens + self.mix(attention @ centers)
        else:
            tokens = tokens + self.mix(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class ToyViT(HierarchicalViT):
    """The toy classifier (registered in timm as ``toycluster_mini``)."""

    def __init__(
        self,
        arch: str = 'mini',
        num_classes: int = 5,
        in_chans: int = 3,
        global_pool: str = 'avg',
        assign_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dims, clusters = TOY_ARCHS[arch]['embed_dims'], TOY_ARCHS[arch]['clusters']
        self.embed_dims = dims
        self.patch_embed = nn.Conv2d(in_chans, dims[0], 4, stride=4)
        self.stages = nn.ModuleList(
            ToyStage(dims[max(i - 1, 0)], dims[i], clusters[i], 1 if i == 0 else 2, assign_dtype) for i in range(4)
        )
        self.init_classifier(num_classes, global_pool)
        self.pretrained_cfg = dict(
            input_size=(3, 32, 32),
            crop_pct=1.0,
            interpolation='bilinear',
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            num_classes=num_classes,
        )

    @staticmethod
    def init_module(module: nn.Module) -> None:
        pass  # torch's default initialisation

    @torch.no_grad()
    def cluster_maps(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        captured = OrderedDict()
        handles = [
            stage.to_clusters.register_forward_hook(
                lambda _m, _i, out, name=f'stages.{i}.to_clusters': captured.__setitem__(name, out)
            )
            for i, stage in enumerate(self.stages)
            if stage.to_clusters is not None
        ]
        try:
            self.forward_stages(x)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def fp32_modules(self):
        for i, stage in enumerate(self.stages):
            if stage.assign is not None:
                yield f'stages.{i}.assign', stage.assign


class ToyBackbone(BackboneContract, ToyViT):
    """The toy mm backbone: presets toy-mini and toy-wide-teacher come from its ``arch_zoo``."""

    family = 'toy'
    arch_zoo = TOY_ARCHS
    preset_prefix = 'toy'

    def __init__(
        self,
        arch: str = 'mini',
        out_indices=(0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        init_cfg: Optional[dict] = None,
        pretrained: Optional[str] = None,
        assign_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(arch, num_classes=0, assign_dtype=assign_dtype)
        self.init_backbone(out_indices, frozen_stages, norm_eval, with_cp, init_cfg, pretrained)


@register_model
def toycluster_mini(pretrained: bool = False, **kwargs) -> ToyViT:
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'):
        kwargs.pop(key, None)
    return ToyViT('mini', **kwargs)
