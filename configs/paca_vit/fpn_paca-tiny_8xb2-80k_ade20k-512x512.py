# Semantic FPN with a PaCa-Tiny backbone on ADE20K, 512x512, 80k iterations at 8 GPUs x 2 images: PVT's
# Semantic-FPN recipe (schedule: ../_base_/schedules/adamw-poly-80k.py). Not in the PaCa-ViT paper.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    '../_base_/datasets/ade20k-8xb2.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/adamw-poly-80k.py',
]
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

crop_size = (512, 512)
pretrained = 'https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_tiny_p2cconv_100_0.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PaCaViT',
        arch='tiny',
        num_clusters=(200, 200, 200, 0),  # 100 ImageNet clusters -> 200 (paper Sec. 3.2.4)
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained),
    ),
    neck=dict(in_channels=[96, 192, 320, 384]),
    decode_head=dict(num_classes=150),
)
