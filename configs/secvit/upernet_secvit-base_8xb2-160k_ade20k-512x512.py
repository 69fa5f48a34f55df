# UperNet 160k (Swin's recipe; SecViT paper Table 5), SecViT-Base backbone, ADE20K 512x512.
_base_ = './upernet_secvit-small_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='base'),
    decode_head=dict(in_channels=[80, 160, 320, 512]),
    auxiliary_head=dict(in_channels=320),
)
