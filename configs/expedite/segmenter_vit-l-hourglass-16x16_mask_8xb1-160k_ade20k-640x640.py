# The 28x28 config with 16x16 clusters (the paper's Table 3, alpha = 10).
_base_ = ['./segmenter_vit-l-hourglass-28x28_mask_8xb1-160k_ade20k-640x640.py']
model = dict(backbone=dict(cluster_grid=(16, 16)))
