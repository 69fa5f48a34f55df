# Mask R-CNN 1x, PaCa-Base with the ConvMixer clustering teacher backbone, COCO (PaCa-ViT paper Tables 2 and
# 4).
_base_ = './mask-rcnn_paca-tiny_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='base_teacher',
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_convmixer_base_100.pth'
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 512]),
)
