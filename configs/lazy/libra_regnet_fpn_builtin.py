"""Libra R-CNN with a RegNet-FPN backbone on the built-in dataset: the recipe of
``libra_rcnn_R_18_FPN_builtin.py`` with a small RegNet (four one-block stages, 32-256
channels, GroupNorm, from scratch) in place of ResNet-18; the BFP wraps its FPN. The plain
twin: ``regnet_fpn_builtin.py``."""
from .common import tiny_regnet
from .libra_rcnn_R_18_FPN_builtin import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.backbone.bottom_up = tiny_regnet()
model.backbone.backbone.in_features = ["s1", "s2", "s3", "s4"]
train.output_dir = "output/lazy_libra_regnet_fpn_builtin"
