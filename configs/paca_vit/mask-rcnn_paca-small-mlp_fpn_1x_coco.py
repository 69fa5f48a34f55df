# Mask R-CNN 1x, PaCa-Small (MLP clustering) backbone, COCO (PaCa-ViT paper Tables 2 and 4).
_base_ = './mask-rcnn_paca-tiny_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        clustering='mlp',
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cmlp_100_0.pth'
        ),
    ),
)
