# Mask R-CNN 3x with a PaCa-Tiny backbone on COCO: 36 epochs of the same multi-scale + crop augmentation,
# with mmdet's Swin 3x schedule (warm-up 1000 iterations, lr x0.1 at epochs 27 and 33). Not in the paper;
# provided because users of backbone plugins expect it.
_base_ = './mask-rcnn_paca-tiny_fpn_1x_coco.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
