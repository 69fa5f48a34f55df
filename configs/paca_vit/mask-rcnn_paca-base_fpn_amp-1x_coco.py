_base_ = './mask-rcnn_paca-base_fpn_1x_coco.py'
# Automatic mixed precision (the official runs trained with --amp).
optim_wrapper = dict(type='AmpOptimWrapper')
