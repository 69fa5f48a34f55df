# Semantic FPN 80k (PVT's recipe; SecViT paper Table 5), SecViT-Small backbone, ADE20K 512x512.
_base_ = './fpn_secvit-tiny_8xb2-80k_ade20k-512x512.py'

model = dict(backbone=dict(arch='small'))
