# Mask R-CNN 1x, PaCa-Small (clusters (100, 100, 100, 100), stage-wise) backbone, COCO (PaCa-ViT paper Tables
# 2 and 4).
# The official README links IMNET_224_pacavit_small_p2cconv_100_49.pth for this row (a copy-paste slip,
# the official README); this is the file name the release pattern gives for (100, 100, 100, 100).
_base_ = './mask-rcnn_paca-tiny_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        num_clusters=(100, 100, 100, 100),
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100.pth'
        ),
    ),
)
