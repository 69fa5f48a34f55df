# The PaCa segmentation head (paper Sec. 3.2.4) on a PaCa-Tiny backbone, as an mmseg EncoderDecoder for the
# 150 ADE20K classes. Uses mmcluster's PaCaViT and PaCaHead: configs built on it import mmcluster
# (custom_imports) and set data_preprocessor.size to their crop size.
norm_cfg = dict(type='SyncBN', requires_grad=True)
pretrained = 'https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_tiny_p2cconv_100_0.pth'
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='PaCaViT',
        arch='tiny',
        # 100 ImageNet clusters -> 200 for the 150 ADE20K classes (paper Sec. 3.2.4); the clustering output
        # layers are re-initialised, everything else loads from the ImageNet checkpoint.
        num_clusters=(200, 200, 200, 0),
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained),
    ),
    decode_head=dict(
        type='PaCaHead',
        in_channels=[96, 192, 320, 384],
        in_index=[0, 1, 2, 3],
        channels=256,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
        loss_cluster=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True, loss_name='loss_cluster'
        ),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
