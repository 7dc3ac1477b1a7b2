"""Helpers of the LazyConfig files in this folder (imported as ``from .common import ...``)."""
import importlib.util
import os

from detectron2.config import LazyConfig


def d2_config(relpath: str):
    """detectron2's packaged LazyConfig ``relpath`` (e.g. ``"common/models/mask_rcnn_fpn.py"``),
    as ``detectron2.model_zoo.get_config`` returns it, without importing
    ``detectron2.model_zoo`` (on detectron2 main it imports ``pkg_resources``, which current
    setuptools no longer ships)."""
    root = importlib.util.find_spec("detectron2").submodule_search_locations[0]
    path = os.path.join(root, "model_zoo", "configs", relpath)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{relpath} is not among this detectron2's packaged configs ({os.path.dirname(path)})")
    return LazyConfig.load(path)


def with_libra_parts(model, refine_level=2, neg_pos_ub=5.0):
    """Add Libra R-CNN's three parts to a detectron2 R-CNN LazyConfig ``model`` (in place):
    the Balanced Feature Pyramid around its backbone, the RPN's negative cap, balanced
    sampling in the box head and Balanced L1 as its box loss."""
    from detectron2.config import LazyCall as L

    from libra_d2.modeling.backbone import BFPBackbone
    from libra_d2.modeling.fast_rcnn import LibraFastRCNNOutputLayers
    from libra_d2.modeling.roi_heads import LibraROIHeads
    from libra_d2.modeling.rpn import LibraRPN

    model.backbone = L(BFPBackbone)(backbone=model.backbone, refine_level=refine_level, refine_type="non_local")
    model.proposal_generator.update(_target_=LibraRPN, neg_pos_ub=neg_pos_ub)
    model.roi_heads.update(_target_=LibraROIHeads, pos_sampler="instance_balanced", neg_sampler="iou_balanced",
                           floor_thresh=-1.0, floor_fraction=0.0, num_bins=3, neg_bin_upper="max_iou",
                           bg_iou_thresh=model.roi_heads.proposal_matcher.thresholds[0])
    model.roi_heads.box_predictor.update(_target_=LibraFastRCNNOutputLayers, box_reg_loss_type="balanced_l1",
                                         balanced_l1_alpha=0.5, balanced_l1_gamma=1.5, balanced_l1_beta=1.0)
    return model


def without_libra_parts(model):
    """The plain detectron2 twin of a model that :func:`with_libra_parts` (or a config written
    the same way) made Libra: the inner backbone, detectron2's RPN, StandardROIHeads and its
    box predictor with smooth L1."""
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers, StandardROIHeads

    model.backbone = model.backbone.backbone
    model.proposal_generator._target_ = RPN
    model.proposal_generator.pop("neg_pos_ub", None)
    model.roi_heads._target_ = StandardROIHeads
    for key in ("pos_sampler", "neg_sampler", "floor_thresh", "floor_fraction", "num_bins", "neg_bin_upper",
                "bg_iou_thresh"):
        model.roi_heads.pop(key, None)
    model.roi_heads.box_predictor._target_ = FastRCNNOutputLayers
    for key in ("balanced_l1_alpha", "balanced_l1_gamma", "balanced_l1_beta"):
        model.roi_heads.box_predictor.pop(key, None)
    model.roi_heads.box_predictor.box_reg_loss_type = "smooth_l1"
    return model


def tiny_regnet():
    """A RegNet small enough for the built-in data on CPU: four stages of one block, 32 to 256
    channels (RegNet's width rule with w_0 32, w_a 55, w_m 2), GroupNorm, from scratch."""
    from detectron2.config import LazyCall as L
    from detectron2.modeling.backbone import RegNet
    from detectron2.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

    return L(RegNet)(stem_class=SimpleStem, stem_width=32, block_class=ResBottleneckBlock, depth=4, w_a=55.0, w_0=32,
                     w_m=2.0, group_width=16, freeze_at=0, norm="GN", out_features=["s1", "s2", "s3", "s4"])


def vitdet_modules():
    """detectron2's ViT and SimpleFeaturePyramid (detectron2 after v0.6, whose ViT blocks use
    timm's layers); a clear error naming what is missing otherwise."""
    try:
        from detectron2.modeling import SimpleFeaturePyramid, ViT
    except ImportError as e:
        import detectron2

        raise ImportError(f"the ViTDet configs need detectron2's ViT and SimpleFeaturePyramid (detectron2 main, after "
                          f"v0.6); this detectron2 is {detectron2.__version__}") from e
    try:
        import timm  # noqa: F401
    except ImportError as e:
        raise ImportError("the ViTDet configs need timm (detectron2's ViT blocks use its layers): pip install timm") from e
    return ViT, SimpleFeaturePyramid


def tiny_vitdet(out_channels=64):
    """ViTDet's plain-ViT backbone and simple feature pyramid (p2..p6), small enough for the
    built-in data on CPU: a 2-block ViT of width 64 (one windowed block, one global)."""
    from functools import partial

    import torch.nn as nn
    from detectron2.config import LazyCall as L
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    ViT, SimpleFeaturePyramid = vitdet_modules()
    net = L(ViT)(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=2, drop_path_rate=0.0, window_size=4,
                 mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), window_block_indexes=[0],
                 residual_block_indexes=[], use_rel_pos=False, out_feature="last_feat")
    return L(SimpleFeaturePyramid)(net=net, in_feature="last_feat", out_channels=out_channels,
                                   scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=L(LastLevelMaxPool)(), norm="LN",
                                   square_pad=0)
