"""Faster R-CNN with the small RegNet-FPN of ``libra_regnet_fpn_builtin.py`` on the built-in
dataset, without Libra's parts (its plain twin: same backbone, data and schedule)."""
from .common import without_libra_parts
from .libra_regnet_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model = without_libra_parts(model)
train.output_dir = "output/lazy_regnet_fpn_builtin"
