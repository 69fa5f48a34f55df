# PaCa segmentation head with a PaCa-Tiny backbone on ADE20K, 512x512, 160k iterations
# (PaCa-ViT paper Table 3; recipe: official segmentation/configs/paca_vit/paca_head/). 8 GPUs x 2 images.
_base_ = [
    '../_base_/models/paca-head_paca-tiny.py',
    '../_base_/datasets/ade20k-8xb2.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/adamw-poly-160k.py',
]
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
# The whole decode head at lr x10 too (the schedule sets it for the clustering output layers).
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.0)}))
