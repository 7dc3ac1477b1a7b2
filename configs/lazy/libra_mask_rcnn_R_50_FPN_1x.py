"""Libra Mask R-CNN R-50-FPN 1x on COCO, as a LazyConfig.

detectron2's own building blocks (``common/`` in its model zoo: Mask R-CNN FPN model, COCO
data with instance masks, SGD, 1x schedule, train options) with the Libra parts swapped in by
LazyCall; the mask head trains on LibraROIHeads' balanced positives. Same model as
``configs/COCO-InstanceSegmentation/libra_mask_rcnn_R_50_FPN_1x.yaml`` (tests/engine/test_lazy.py).

    python train_net.py --config-file configs/lazy/libra_mask_rcnn_R_50_FPN_1x.py --num-gpus 8
"""

from detectron2.config import LazyCall as L

from libra_d2.modeling.backbone import BFPBackbone
from libra_d2.modeling.fast_rcnn import LibraFastRCNNOutputLayers
from libra_d2.modeling.roi_heads import LibraROIHeads
from libra_d2.modeling.rpn import LibraRPN

from .common import d2_config

model = d2_config("common/models/mask_rcnn_fpn.py").model
dataloader = d2_config("common/data/coco.py").dataloader
optimizer = d2_config("common/optim.py").SGD
lr_multiplier = d2_config("common/coco_schedule.py").lr_multiplier_1x
train = d2_config("common/train.py").train

# the yacs configs' normalisation (MSRA R-50 weights, BGR 0..255)
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [1.0, 1.0, 1.0]

# Balanced Feature Pyramid: FPN + gather/refine/scatter at p4 with a non-local block
model.backbone = L(BFPBackbone)(backbone=model.backbone, refine_level=2, refine_type="non_local")

# RPN: at most 5 negatives per positive anchor of an image
model.proposal_generator._target_ = LibraRPN
model.proposal_generator.neg_pos_ub = 5.0

# Box head: IoU-balanced negatives, instance-balanced positives, Balanced L1 loss
model.roi_heads._target_ = LibraROIHeads
model.roi_heads.update(
    pos_sampler="instance_balanced",
    neg_sampler="iou_balanced",
    floor_thresh=-1.0,
    floor_fraction=0.0,
    num_bins=3,
    neg_bin_upper="max_iou",
    bg_iou_thresh=0.5,  # = proposal_matcher.thresholds[0]
)
model.roi_heads.box_predictor._target_ = LibraFastRCNNOutputLayers
model.roi_heads.box_predictor.update(
    box_reg_loss_type="balanced_l1", balanced_l1_alpha=0.5, balanced_l1_gamma=1.5, balanced_l1_beta=1.0,
)

model.backbone.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.seed = -1
