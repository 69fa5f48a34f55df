# PaCa segmentation head 160k (PaCa-ViT paper Table 4), PaCa-Small (clusters (100, 100, 100, 100), stage-wise
# on ImageNet) backbone, ADE20K 512x512. Downstream every clustered stage has 200 clusters (paper Table 4
# caption).
# The official README links IMNET_224_pacavit_small_p2cconv_100_49.pth for this row (a copy-paste slip,
# the official README); this is the file name the release pattern gives for (100, 100, 100, 100).
_base_ = './paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='small',
        num_clusters=(200, 200, 200, 200),
        drop_path_rate=0.1,
        init_cfg=dict(
            checkpoint='https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100.pth'
        ),
    ),
)
