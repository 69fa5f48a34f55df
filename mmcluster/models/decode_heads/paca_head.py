"""The PaCa segmentation head (PaCa-ViT paper, Sec. 3.4, Fig. 5, Eqns. 9-14)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from mmcv.cnn import ConvModule, build_norm_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import accuracy
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, SampleList

from ..backbones.base import check_int
from ..layers import SoftAssignment, pool_clusters


class ClusterTokenProjection(nn.Module):
    """The paper's "LinearBlock" on cluster tokens (B, K, C_in): Linear, then a norm over channels, then ReLU.

    The norm comes from ``norm_cfg`` and is applied to a (B, C, K, 1) view, so 2d norms (``BN``,
    ``SyncBN``) normalise each channel over the batch and the K clusters, as a BatchNorm1d would.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: ConfigType, act_cfg: ConfigType) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels)
        self.norm = build_norm_layer(norm_cfg, out_channels)[1]
        self.act = MODELS.build(act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.linear(x), 'b k c -> b c k 1')
        return rearrange(self.act(self.norm(x)), 'b c k 1 -> b k c')


@MODELS.register_module()
class PaCaHead(BaseDecodeHead):
    """PaCa segmentation head: single-head patch-to-cluster attention with one cluster per class.

    1. Each backbone level is projected to ``channels`` (D) by a 1x1 ConvModule and resized to the first
       level's size; the concatenation is F (B, 4D, H, W).
    2. Assignment logits: ConvModule(4D -> D) then a 1x1 conv D -> K (K = ``num_classes``), Eqn. 9; the
       assignment C is their softmax over the H*W positions.
    3. Query Q = ConvModule(F) (Eqn. 10); clusters Z = C^T F (Eqn. 11, the 4D features are pooled);
       key and value are LinearBlocks of Z (Eqn. 12).
    4. Out = Softmax_K(Q K^T) V, unscaled, single head (Eqn. 13), then a ConvModule and the classifier
       (Eqn. 14).

    During training the assignment logits are also supervised directly: upsampled to the label size,
    they are treated as per-pixel class logits (cluster k = class k) under ``loss_cluster``
    (cross-entropy, weight 0.4 as in the paper). Norm and activation layers follow ``norm_cfg`` and
    ``act_cfg``.

    Args:
        loss_cluster: config of the auxiliary loss on the assignment logits; its ``loss_name`` names the
            entry in the loss dict.
        **kwargs: :class:`BaseDecodeHead` arguments. ``input_transform`` is always ``'multiple_select'``.
    """

    def __init__(
        self,
        loss_cluster: ConfigType = dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True, loss_name='loss_cluster'
        ),
        **kwargs,
    ) -> None:
        if kwargs.setdefault('input_transform', 'multiple_select') != 'multiple_select':
            raise ValueError(
                f"PaCaHead fuses all levels: input_transform must be 'multiple_select', "
                f'got {kwargs["input_transform"]!r}'
            )
        for name in ('channels', 'num_classes'):
            if name in kwargs:
                check_int(name, kwargs[name], 1)
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, Sequence) or len(self.in_channels) < 1:
            raise ValueError(f'in_channels must list the channels of every input level, got {self.in_channels}')
        if self.norm_cfg is None:
            raise ValueError('PaCaHead needs a norm_cfg (its key/value blocks are Linear-Norm-ReLU)')

        def conv1x1(in_channels: int) -> ConvModule:
            return ConvModule(
                in_channels, self.channels, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg
            )

        fused = self.channels * len(self.in_channels)
        self.convs = nn.ModuleList([conv1x1(c) for c in self.in_channels])
        self.query = conv1x1(fused)
        self.cluster_embed = conv1x1(fused)
        self.to_clusters = nn.Conv2d(self.channels, self.num_classes, 1)
        self.assign = SoftAssignment()
        self.key = ClusterTokenProjection(fused, self.channels, self.norm_cfg, self.act_cfg)
        self.value = ClusterTokenProjection(fused, self.channels, self.norm_cfg, self.act_cfg)
        self.proj = conv1x1(self.channels)
        self.loss_cluster = MODELS.build(loss_cluster)

    def forward_with_clusters(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits (B, K, H, W) and assignment logits (B, K, H, W) at the first level's size."""
        feats = self._transform_inputs(inputs)
        size = feats[0].shape[2:]
        fused = torch.cat(
            [
                resize(conv(x), size=size, mode='bilinear', align_corners=self.align_corners)
                for conv, x in zip(self.convs, feats)
            ],
            dim=1,
        )
        cluster_logits = self.to_clusters(self.cluster_embed(fused))
        assignment = self.assign(cluster_logits.flatten(2))  # (B, K, N), softmax over N
        tokens = rearrange(fused, 'b c h w -> b (h w) c')
        clusters = pool_clusters(assignment, tokens)  # (B, K, 4D), Eqn. 11, in fp32 under autocast
        query = rearrange(self.query(fused), 'b c h w -> b 1 (h w) c')
        key = self.key(clusters).unsqueeze(1)
        value = self.value(clusters).unsqueeze(1)
        out = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # Eqn. 13: single head, unscaled
        out = rearrange(out.squeeze(1), 'b (h w) c -> b c h w', h=size[0], w=size[1])
        return self.cls_seg(self.proj(out)), cluster_logits

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_clusters(inputs)[0]

    def loss(self, inputs: Sequence[torch.Tensor], batch_data_samples: SampleList, train_cfg: ConfigType) -> dict:
        seg_logits, cluster_logits = self.forward_with_clusters(inputs)
        losses = self.loss_by_feat(seg_logits, batch_data_samples)
        seg_label = self._stack_batch_gt(batch_data_samples).squeeze(1)
        cluster_logits = resize(
            cluster_logits, size=seg_label.shape[1:], mode='bilinear', align_corners=self.align_corners
        )
        losses[self.loss_cluster.loss_name] = self.loss_cluster(
            cluster_logits, seg_label, ignore_index=self.ignore_index
        )
        losses['acc_cluster'] = accuracy(cluster_logits, seg_label, ignore_index=self.ignore_index)
        return losses
