_base_ = './mask-rcnn_paca-tiny_fpn_ms-crop-3x_coco.py'
# Automatic mixed precision.
optim_wrapper = dict(type='AmpOptimWrapper')
