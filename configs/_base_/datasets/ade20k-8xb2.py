# mmseg's ADE20K dataset (512x512 crops, data/ade/ADEChallengeData2016) at 2 training images per GPU, the
# batch of every PaCa-ViT ADE20K recipe (8 GPUs x 2 images); validation and test one image at a time.
_base_ = ['mmseg::_base_/datasets/ade20k.py']

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
