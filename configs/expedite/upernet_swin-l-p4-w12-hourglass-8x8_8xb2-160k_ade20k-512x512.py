# Expedite (Liang et al., NeurIPS 2022) on mmseg's UperNet Swin-L (window 12, ImageNet-22k 384 pre-training,
# ADE20K 512 x 512) without fine-tuning: 12 x 12 windows of stage 3 clustered into 8 x 8 after block 6 (7 blocks
# at full resolution) and reconstructed before the patch merging. The paper has no UperNet row; the settings
# are those of its Mask2Former Swin-L ADE20K semantic row (spec §9: alpha 8 as the paper counts it, i.e. 7
# blocks at full resolution; kappa 5, lambda 5, tau 0.01, k 10, tau_r 0.01).
# mmseg publishes no checkpoint for the base config; one trained with it loads unchanged.
_base_ = ['mmseg::swin/swin-large-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='HourglassSwinTransformer',
        cluster_after=6,
        cluster_window=8,
        num_iters=5,
        neighbourhood_size=5,
        temperature=0.01,
        num_neighbours=10,
        reconstruction_temperature=0.01,
    )
)
