# The PaCa-ViT ADE20K schedule (official segmentation/configs/paca_vit/ of iVMCL/PaCaViT), shared by the
# UperNet and PaCa-head families: mmseg's 160k
# iteration loop, hooks and checkpointing every 16k iterations, with AdamW (lr 6e-5, weight decay 0.01), a
# linear warm-up over 1500 iterations and linear ("poly" with power 1) decay to 0.
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # lr x10 for the re-initialised clustering output layers (200 instead of 100 clusters) of every clustering
    # type (conv, mlp, teacher); no weight decay on norms. The official UperNet configs had only the norm
    # rule (see docs/paca_vit.md); the PaCa-head family adds the decode head at lr x10.
    paramwise_cfg=dict(custom_keys={'to_clusters': dict(lr_mult=10.0), 'norm': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
