# Mask R-CNN 3x (36 epochs, multi-scale with crop), PaCa-Base backbone, COCO. Not in the paper.
_base_ = './mask-rcnn_paca-tiny_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_base_p2cconv_100_0.pth'
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 512]),
)
