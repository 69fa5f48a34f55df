# PaCa segmentation head 160k (PaCa-ViT paper Table 3), PaCa-Base with the ConvMixer clustering teacher
# backbone, ADE20K 512x512.
_base_ = './paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='base_teacher',
        num_clusters=(200, 200, 200, 200),
        drop_path_rate=0.5,
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_convmixer_base_100.pth'
        ),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 512]),
)
