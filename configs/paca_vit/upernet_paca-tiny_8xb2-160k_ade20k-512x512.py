# UperNet with a PaCa-Tiny backbone on ADE20K, 512x512, 160k iterations (PaCa-ViT paper Table 3;
# recipe: spec §6.2). 8 GPUs x 2 images.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
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
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 320, 384], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # lr x10 for the re-initialised clustering output layers (200 instead of 100 clusters), every clustering
    # type; the official UperNet configs had only the norm rule (see docs/paca_vit.md).
    paramwise_cfg=dict(custom_keys={'to_clusters': dict(lr_mult=10.0), 'norm': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
