# Cascade Mask R-CNN 3x+MS, SecViT-Base backbone, COCO (SecViT paper Table 3); tokens_per_cluster=98.
_base_ = './cascade-mask-rcnn_secvit-small_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='base'), neck=dict(in_channels=[80, 160, 320, 512]))
