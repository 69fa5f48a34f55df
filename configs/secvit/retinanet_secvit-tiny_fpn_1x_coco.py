# RetinaNet 1x with a SecViT-Tiny backbone on COCO (SecViT paper Table 4; recipe: the paper's appendix:
# AdamW lr 1e-4, weight decay 1e-4, 12 epochs, shorter side 800 / longer side <= 1333, 8 GPUs x 2 images;
# FPN from stride 8 with extra convs on the input, as the author's RMT RetinaNet configs).
# Attention mode: tokens_per_cluster=98 (clusters of about 98 tokens at any resolution; see
# mask-rcnn_secvit-tiny_fpn_1x_coco.py for why not the paper's fixed counts).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
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
    neck=dict(in_channels=[64, 128, 256, 512], start_level=1, add_extra_convs='on_input', num_outs=5),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
)
