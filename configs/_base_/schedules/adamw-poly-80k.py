# PVT's Semantic-FPN schedule, used by the Semantic FPN family: mmseg's 80k iteration loop and hooks, with
# AdamW (lr 1e-4, weight decay 1e-4) and poly decay with power 0.9 (PVT trains 40k iterations at 8 x 4
# images, the same number of epochs as 80k at 8 x 2).
_base_ = ['mmseg::_base_/schedules/schedule_80k.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    # lr x10 for the re-initialised clustering output layers (200 instead of 100 clusters); no weight decay
    # on norms.
    paramwise_cfg=dict(custom_keys={'to_clusters': dict(lr_mult=10.0), 'norm': dict(decay_mult=0.0)}),
)
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=80000)]
