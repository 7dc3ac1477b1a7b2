"""Libra Mask R-CNN RegNetX-4GF-FPN 1x on COCO, as a LazyConfig: detectron2's own
``COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py`` with Libra's three parts
added (BFP around its FPN, balanced sampling with Balanced L1 in the box head, the RPN's
negative cap).

    python train_net.py --config-file configs/lazy/libra_mask_rcnn_regnetx_4gf_dds_fpn_1x.py --num-gpus 8
"""
from .common import d2_config, with_libra_parts

_base = d2_config("COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py")
model, dataloader, optimizer, lr_multiplier, train = (
    _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)
model = with_libra_parts(model, refine_level=2)
