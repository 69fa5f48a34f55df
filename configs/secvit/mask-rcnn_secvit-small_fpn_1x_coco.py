# Mask R-CNN 1x, SecViT-Small backbone, COCO (SecViT paper Table 4); linear attention mode (tokens_per_cluster=98).
_base_ = './mask-rcnn_secvit-tiny_fpn_1x_coco.py'

model = dict(backbone=dict(arch='small'))
