# Mask R-CNN 3x (36 epochs, multi-scale with crop), PaCa-Small backbone, COCO. Not in the paper.
_base_ = './mask-rcnn_paca-tiny_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100_0.pth'
        ),
    ),
)
