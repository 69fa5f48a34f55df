# RetinaNet 1x, SecViT-Base backbone, COCO (SecViT paper Table 4); linear attention mode (tokens_per_cluster=98).
_base_ = './retinanet_secvit-tiny_fpn_1x_coco.py'

model = dict(backbone=dict(arch='base'), neck=dict(in_channels=[80, 160, 320, 512]))
