"""Libra R-CNN on ViTDet's backbone (a plain ViT and its simple feature pyramid, p2..p6) on
the built-in dataset: the recipe of ``libra_rcnn_R_18_FPN_builtin.py`` with a 2-block ViT of
width 64 in place of ResNet-18-FPN; the BFP wraps the simple feature pyramid. Needs detectron2
main (ViT arrived after v0.6). The plain twin: ``vitdet_builtin.py``."""
from .common import tiny_vitdet
from .libra_rcnn_R_18_FPN_builtin import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.backbone = tiny_vitdet(out_channels=64)
train.output_dir = "output/lazy_libra_vitdet_builtin"
