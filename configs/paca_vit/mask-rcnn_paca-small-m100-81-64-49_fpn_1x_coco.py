# Mask R-CNN 1x, PaCa-Small (clusters (100, 81, 64, 49), stage-wise) backbone, COCO (PaCa-ViT paper Tables 2
# and 4).
_base_ = './mask-rcnn_paca-tiny_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        num_clusters=(100, 81, 64, 49),
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100_49.pth'
        ),
    ),
)
