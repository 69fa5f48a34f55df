# The demo: the PaCa segmentation head on PaCa-Tiny (the ADE20K recipe's model, trained from scratch) on
# the bundled shapes dataset in ADE20K format, sized for a 2-core CPU.
_base_ = ['../paca_vit/paca-head_paca-tiny_8xb2-160k_ade20k-512x512.py']

data_root = 'data/shapes/ade'
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle'),
    palette=[(0, 0, 0), (220, 20, 60), (0, 128, 255), (255, 200, 0)],
)
crop_size = (128, 128)

# The PaCa-Tiny backbone is the recipe's (randomly initialised: no download); the head has half the
# recipe's channels, so that a 2-core CPU trains it in a few minutes.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None, drop_path_rate=0.0),
    decode_head=dict(channels=128, num_classes=4),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),  # no scale jitter: the demo is short
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
shapes_dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True,
)
train_dataloader = dict(
    batch_size=8,  # not fewer: the key/value BatchNorms of the head normalise over batch x 4 cluster tokens
    num_workers=0,  # on 2 cores a loader process only competes with training
    persistent_workers=False,
    dataset=dict(
        shapes_dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        shapes_dataset,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters + 1)  # evaluated by tools/test.py afterwards
optim_wrapper = dict(optimizer=dict(lr=6e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=30, end=max_iters),
]
default_hooks = dict(
    logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=1), visualization=dict(draw=False)
)
randomness = dict(seed=0)  # a reproducible demo
