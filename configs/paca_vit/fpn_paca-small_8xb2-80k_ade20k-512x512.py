# Semantic FPN 80k (PVT's recipe; not in the paper), PaCa-Small backbone, ADE20K 512x512.
_base_ = './fpn_paca-tiny_8xb2-80k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='small',
        num_clusters=(200, 200, 200, 0),
        drop_path_rate=0.1,
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100_0.pth'
        ),
    ),
)
