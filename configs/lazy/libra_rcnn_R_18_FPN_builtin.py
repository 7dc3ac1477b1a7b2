"""Libra R-CNN on the built-in dataset, as a LazyConfig: the same model, data, optimizer and
schedule as ``configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml`` (GroupNorm ResNet-18 + FPN with
64 channels from scratch, AdamW with per-parameter gradient clipping, 900 iterations on CPU),
written on detectron2's ``common/`` configs.

    python train_net.py --config-file configs/lazy/libra_rcnn_R_18_FPN_builtin.py
    python train_net.py --config-file configs/lazy/libra_rcnn_R_18_FPN_builtin.py --eval-only \\
        train.init_checkpoint=output/lazy_libra_rcnn_R_18_FPN_builtin/model_final.pth
"""
import torch
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

import libra_d2  # noqa: F401  (registers the built-in datasets)
from libra_d2.engine.optimizer import clipped_optimizer
from libra_d2.modeling.backbone import BFPBackbone
from libra_d2.modeling.fast_rcnn import LibraFastRCNNOutputLayers
from libra_d2.modeling.roi_heads import LibraROIHeads
from libra_d2.modeling.rpn import LibraRPN

from .common import d2_config

model = d2_config("common/models/mask_rcnn_fpn.py").model
dataloader = d2_config("common/data/coco.py").dataloader
train = d2_config("common/train.py").train

# ---- model: detectron2's Faster R-CNN FPN, resized for the built-in data, Libra parts in
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [1.0, 1.0, 1.0]
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.update(depth=18, norm="GN")
model.backbone.bottom_up.stages.pop("stride_in_1x1")  # not an argument of ResNet-18's BasicBlock
model.backbone.bottom_up.freeze_at = 0
model.backbone.update(out_channels=64, norm="GN")
model.backbone = L(BFPBackbone)(backbone=model.backbone, refine_level=2, refine_type="non_local")

model.proposal_generator.update(_target_=LibraRPN, neg_pos_ub=5.0, pre_nms_topk=(1000, 500), post_nms_topk=(500, 300))
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]

model.roi_heads.update(
    _target_=LibraROIHeads,
    num_classes=4,
    batch_size_per_image=128,
    pos_sampler="instance_balanced",
    neg_sampler="iou_balanced",
    floor_thresh=-1.0,
    floor_fraction=0.0,
    num_bins=3,
    neg_bin_upper="max_iou",
    bg_iou_thresh=0.5,
)
model.roi_heads.box_head.update(input_shape=ShapeSpec(channels=64, height=7, width=7), fc_dims=[256, 256])
model.roi_heads.box_predictor.update(
    _target_=LibraFastRCNNOutputLayers,
    input_shape=ShapeSpec(channels=256),
    box_reg_loss_type="balanced_l1",
    balanced_l1_alpha=0.5,
    balanced_l1_gamma=1.5,
    balanced_l1_beta=1.0,
)

# ---- data
dataloader.train.dataset.names = "libra_shapes_train"
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(176, 192, 208), sample_style="choice", max_size=280),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "libra_shapes_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=192, max_size=280)]
dataloader.test.num_workers = 1

# ---- optimizer and schedule: AdamW 5e-4, decoupled weight decay 0.05, clip each parameter's
# gradient norm at 5; warm-up 100 iterations, x0.1 at 700 and 850 of 900
optimizer = L(clipped_optimizer)(
    optimizer=torch.optim.AdamW,
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.0005,
    weight_decay=0.05,
    clip_value=5.0,
    clip_type="norm",
)
train.max_iter = 900
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[700, 850, 900]),
    warmup_length=100 / 900,
    warmup_method="linear",
    warmup_factor=0.001,
)
train.update(
    output_dir="output/lazy_libra_rcnn_R_18_FPN_builtin",
    device="cpu",
    seed=42,
    checkpointer=dict(period=300, max_to_keep=100),
    eval_period=0,
    log_period=20,
)
