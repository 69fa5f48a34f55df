_base_ = './upernet_paca-tiny_8xb2-160k_ade20k-512x512.py'
# Automatic mixed precision (the official runs trained with --amp).
optim_wrapper = dict(type='AmpOptimWrapper')
