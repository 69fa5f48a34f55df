# Mask R-CNN 1x, PaCa-Small (clusters (49, 49, 49, 0), stage-wise) backbone, COCO (PaCa-ViT paper Tables 2 and
# 4).
_base_ = './mask-rcnn_paca-tiny_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        num_clusters=(49, 49, 49, 0),
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_49_0.pth'
        ),
    ),
)
