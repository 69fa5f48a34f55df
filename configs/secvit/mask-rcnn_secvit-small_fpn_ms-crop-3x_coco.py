# Mask R-CNN 3x+MS with a SecViT-Small backbone on COCO (SecViT paper Table 3). The paper's appendix: 36
# epochs, shorter side resized at random to 480-800, AdamW lr 1e-4, weight decay 0.05. Augmentation as the
# author's RMT 3x configs (DETR-style: multi-scale resize, or resize 400/500/600 + crop 384-600 + multi-scale
# resize); lr x0.1 at epochs 27 and 33. Linear attention mode (tokens_per_cluster=98), as the 1x configs.
_base_ = './mask-rcnn_secvit-small_fpn_1x_coco.py'

ms_scales = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ],
    ),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
