"""Libra Mask R-CNN on ViTDet's ViT-B, as a LazyConfig (detectron2 main): detectron2's
``common/models/mask_rcnn_vitdet.py`` model (ViT-B, simple feature pyramid, LN heads) with
Libra's three parts added (BFP around the simple feature pyramid, balanced sampling with
Balanced L1 in the box head, the RPN's negative cap), on detectron2's common COCO data, SGD
and 1x schedule. ViTDet's own recipe (large-scale jitter, AdamW with layer-wise decay,
100 epochs, MAE weights) lives in detectron2's ``projects/ViTDet``; set ``dataloader``,
``optimizer``, ``lr_multiplier`` and ``train`` from there to reproduce it.

    python train_net.py --config-file configs/lazy/libra_mask_rcnn_vitdet_b_100ep.py --num-gpus 8
"""
from .common import d2_config, vitdet_modules, with_libra_parts

vitdet_modules()  # detectron2 0.6 has no ViT: stop here with the version needed
model = with_libra_parts(d2_config("common/models/mask_rcnn_vitdet.py").model, refine_level=2)
dataloader = d2_config("common/data/coco.py").dataloader
optimizer = d2_config("common/optim.py").SGD
lr_multiplier = d2_config("common/coco_schedule.py").lr_multiplier_1x
train = d2_config("common/train.py").train
