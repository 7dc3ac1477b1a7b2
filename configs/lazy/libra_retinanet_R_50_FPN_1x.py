"""Libra RetinaNet R-50-FPN 1x on COCO, as a LazyConfig: detectron2's ``common/`` RetinaNet
with the BFP neck (refined at p4 = level 1 of p3..p7) and Balanced L1 (beta 0.11) swapped in.
Same model as ``configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml``.

    python train_net.py --config-file configs/lazy/libra_retinanet_R_50_FPN_1x.py --num-gpus 8
"""

from detectron2.config import LazyCall as L

from libra_d2.modeling.backbone import BFPBackbone
from libra_d2.modeling.retinanet import LibraRetinaNet

from .common import d2_config

model = d2_config("common/models/retinanet.py").model
dataloader = d2_config("common/data/coco.py").dataloader
optimizer = d2_config("common/optim.py").SGD
lr_multiplier = d2_config("common/coco_schedule.py").lr_multiplier_1x
train = d2_config("common/train.py").train

dataloader.train.mapper.use_instance_mask = False
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [1.0, 1.0, 1.0]
optimizer.lr = 0.01

model._target_ = LibraRetinaNet
model.backbone = L(BFPBackbone)(backbone=model.backbone, refine_level=1, refine_type="non_local")
# the yacs configs' anchor sizes (3 scales per octave, written to 4 decimals; common/ computes
# them exactly, which moves boxes by ~1e-5 px)
model.anchor_generator.sizes = [
    [32, 40.3175, 50.7968], [64, 80.6349, 101.5937], [128, 161.2699, 203.1873], [256, 322.5398, 406.3747],
    [512, 645.0796, 812.7493],
]
model.smooth_l1_beta = 0.0
model.box_reg_loss_type = "smooth_l1"  # replaced by Balanced L1 below (LibraRetinaNet computes it)
model.balanced_l1 = dict(alpha=0.5, gamma=1.5, beta=0.11)

model.backbone.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.seed = -1
