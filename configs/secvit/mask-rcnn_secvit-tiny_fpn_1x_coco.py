# Mask R-CNN 1x with a SecViT-Tiny backbone on COCO (SecViT paper Table 4; recipe: the paper's appendix:
# AdamW lr 1e-4, weight decay 0.05, 12 epochs, shorter side 800 / longer side <= 1333, 8 GPUs x 2 images).
# Attention mode: tokens_per_cluster=98, i.e. ceil(N / 98) clusters per stage (the paper's 32 / 8 / 2 / full
# at 224x224, about 98 tokens per cluster at any resolution). The paper's fixed counts (num_clusters=(32, 8,
# 2, 0)) give ever larger clusters at 800x1333 and took 2.4x Swin-T's time at 800x1280 in our benchmark, the
# linear mode 1.35x; the parameters are the same, so checkpoints of either mode load into the other.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

# The official ImageNet checkpoints are only on Baidu pan (no URL to download from). Pass the file with
# --cfg-options model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint=PATH, or set
# init_cfg=dict(type='Pretrained', checkpoint=PATH) below; official state dicts convert on load.
model = dict(
    backbone=dict(
        _delete_=True,
        type='SecViT',
        arch='tiny',
        tokens_per_cluster=98,
        out_indices=(0, 1, 2, 3),
        init_cfg=None,
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
)
