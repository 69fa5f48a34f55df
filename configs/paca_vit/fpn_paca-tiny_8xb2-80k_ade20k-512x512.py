# Semantic FPN with a PaCa-Tiny backbone on ADE20K, 512x512, 80k iterations at 8 GPUs x 2 images: PVT's
# Semantic-FPN recipe (AdamW 1e-4, weight decay 1e-4, poly lr with power 0.9; PVT trains 40k iterations at
# 8 x 4 images, the same number of epochs). Not in the PaCa-ViT paper.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
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
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 320, 384]),
    decode_head=dict(num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'to_clusters': dict(lr_mult=10.0), 'norm': dict(decay_mult=0.0)}))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=80000)]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
