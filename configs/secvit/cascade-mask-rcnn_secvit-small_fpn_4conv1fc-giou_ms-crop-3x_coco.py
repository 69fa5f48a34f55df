# Cascade Mask R-CNN 3x+MS with a SecViT-Small backbone on COCO (SecViT paper Table 3). Detector, data and
# schedule: mmdet's ConvNeXt cascade config (the Swin-style heads: 4 convs + 1 fc with SyncBN and GIoU loss,
# which the paper's 83M / 111M parameters imply; DETR-style multi-scale 480-800 + crop; 36 epochs, lr x0.1 at
# 27 and 33). Optimizer: the paper's appendix (AdamW lr 1e-4, weight decay 0.05), no layer-wise decay, fp32.
# Linear attention mode (tokens_per_cluster=98), as the other COCO configs.
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

# The official ImageNet checkpoints are only on Baidu pan (no URL to download from). Pass the file with
# --cfg-options model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint=PATH, or set
# init_cfg=dict(type='Pretrained', checkpoint=PATH) below; official state dicts convert on load.
model = dict(
    backbone=dict(
        _delete_=True,
        type='SecViT',
        arch='small',
        tokens_per_cluster=98,
        out_indices=(0, 1, 2, 3),
        init_cfg=None,
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
