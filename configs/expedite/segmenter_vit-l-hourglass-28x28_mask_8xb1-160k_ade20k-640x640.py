# Expedite (Liang et al., NeurIPS 2022) on mmseg's Segmenter ViT-L/16 (ADE20K, 640 x 640 crops, 40 x 40
# tokens) without fine-tuning: clustering after block 9 (alpha = 10) into 28 x 28 centres, the decode head on
# the centres, its logits reconstructed to 40 x 40 (spec §4.1, §9). Evaluate with mmseg's Segmenter ViT-L
# checkpoint (the state dict is unchanged). mmseg's base config file is named 512x512 but uses 640 crops.
_base_ = ['mmseg::segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmcluster'], allow_failed_imports=False)

model = dict(
    type='HourglassEncoderDecoder',
    backbone=dict(
        type='HourglassVisionTransformer',
        cluster_after=9,
        cluster_grid=(28, 28),
        num_iters=5,
        neighbourhood_size=5,
        temperature=0.02,
        reconstruct='decode_head',
        num_neighbours=20,
        reconstruction_temperature=0.02,
    ),
)
