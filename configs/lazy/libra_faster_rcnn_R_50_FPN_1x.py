"""Libra Faster R-CNN R-50-FPN 1x on COCO, as a LazyConfig: ``libra_mask_rcnn_R_50_FPN_1x.py``
(detectron2's ``common/`` configs with the Libra parts swapped in) without the mask branch.
Same model as ``configs/COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml`` (tests/engine/test_lazy.py).

    python train_net.py --config-file configs/lazy/libra_faster_rcnn_R_50_FPN_1x.py --num-gpus 8
"""
from .libra_mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
dataloader.train.mapper.use_instance_mask = False
