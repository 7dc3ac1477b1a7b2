"""Faster R-CNN on the small ViTDet backbone of ``libra_vitdet_builtin.py`` on the built-in
dataset, without Libra's parts (its plain twin). Needs detectron2 main."""
from .common import without_libra_parts
from .libra_vitdet_builtin import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model = without_libra_parts(model)
train.output_dir = "output/lazy_vitdet_builtin"
