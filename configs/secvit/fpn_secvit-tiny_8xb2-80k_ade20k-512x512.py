# Semantic FPN with a SecViT-Tiny backbone on ADE20K, 512x512, 80k iterations at 8 GPUs x 2 images (SecViT
# paper Table 5, "PVT's settings": AdamW lr 1e-4, weight decay 1e-4, poly schedule; see spec §5.3).
# Attention mode: the paper's fixed cluster counts (32, 8, 2, full), the official code's (at 512x512 a
# stage-1 cluster holds 512 tokens).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    '../_base_/datasets/ade20k-8xb2.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/adamw-poly-80k.py',
]
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

crop_size = (512, 512)
# The official ImageNet checkpoints are only on Baidu pan (no URL to download from). Pass the file with
# --cfg-options model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint=PATH, or set
# init_cfg=dict(type='Pretrained', checkpoint=PATH) below; official state dicts convert on load.
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='SecViT',
        arch='tiny',
        num_clusters=(32, 8, 2, 0),
        out_indices=(0, 1, 2, 3),
        init_cfg=None,
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
    decode_head=dict(num_classes=150),
)
# no weight decay on norms (SecViT has no clustering layers to re-initialise: PaCa's lr rule does not apply)
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.0)}))
