# UperNet with a PaCa-Tiny backbone on ADE20K, 512x512, 160k iterations (PaCa-ViT paper Table 3;
# recipe: official segmentation/configs/paca_vit/upernet/). 8 GPUs x 2 images.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    '../_base_/datasets/ade20k-8xb2.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/adamw-poly-160k.py',
]
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

crop_size = (512, 512)
pretrained = 'https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_tiny_p2cconv_100_0.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='PaCaViT',
        arch='tiny',
        num_clusters=(200, 200, 200, 0),  # 100 ImageNet clusters -> 200 (paper Sec. 3.2.4)
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained),
    ),
    decode_head=dict(in_channels=[96, 192, 320, 384], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150),
)
