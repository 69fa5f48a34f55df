# Mask R-CNN 1x, SecViT-Large backbone, COCO (SecViT paper Table 4); linear attention mode (tokens_per_cluster=98).
_base_ = './mask-rcnn_secvit-tiny_fpn_1x_coco.py'

model = dict(backbone=dict(arch='large'), neck=dict(in_channels=[112, 224, 448, 640]))
