"""LibraRetinaNet: RetinaNet whose box loss can be Balanced L1 (use with the BFP backbone)."""
import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from .config import require_libra_config, split_balanced_l1, validate_balanced_l1_args
from .engine.trainer_keys import guard_trainer_only_settings, trainer_only_settings
from .losses import balanced_l1_loss
from .matcher import ReferenceMatcher

__all__ = ["LibraRetinaNet"]


@META_ARCH_REGISTRY.register()
class LibraRetinaNet(RetinaNet):
    """RetinaNet with ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE: balanced_l1``.

    The Balanced L1 loss (``MODEL.LIBRA.RETINANET_BALANCED_L1``, reference beta 0.11) is
    summed over the foreground anchors' deltas and divided by detectron2's RetinaNet
    normaliser (the moving average of the number of foreground anchors), exactly where
    detectron2 divides its own box loss. Libra RetinaNet = this + the
    ``build_retinanet_resnet_bfp_backbone`` backbone (see configs). Other loss types are
    detectron2's.

    ``MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS`` (default False, detectron2's order): when True,
    each level's decoded boxes are clipped to the (resized) image and boxes that clipping
    leaves with zero width or height are dropped, both before class-wise NMS and the top-k,
    as the reference implementation does (its ``min_bbox_size=0`` keeps w > 0 and h > 0).
    detectron2 runs NMS on unclipped boxes, clips in post-processing and removes empty boxes
    only after the top ``DETECTIONS_PER_IMAGE`` are taken, which keeps a different set when
    boxes overlap only outside the image and returns fewer detections when some of the top
    ones are empty. Converted reference checkpoints set it.
    """

    @configurable
    def __init__(self, *args, balanced_l1=None, clip_before_nms=False, trainer_only_settings=(), **kwargs):
        validate_balanced_l1_args("LibraRetinaNet", "balanced_l1", balanced_l1, "RETINANET_BALANCED_L1")
        super().__init__(*args, **kwargs)
        self.balanced_l1 = balanced_l1
        self.clip_before_nms = bool(clip_before_nms)
        guard_trainer_only_settings(self, list(trainer_only_settings))

    @classmethod
    def from_config(cls, cfg):
        require_libra_config(cfg)
        parent_cfg, params = split_balanced_l1(cfg, "RETINANET", "RETINANET_BALANCED_L1")
        ret = super().from_config(parent_cfg)
        ret["balanced_l1"] = params
        ret["trainer_only_settings"] = trainer_only_settings(cfg)
        ret["clip_before_nms"] = cfg.MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS
        if cfg.MODEL.LIBRA.REFERENCE_MATCHER:
            ret["anchor_matcher"] = ReferenceMatcher(
                cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS,
                min_low_quality_iou=cfg.MODEL.LIBRA.RETINANET_MIN_POS_IOU)
        return ret

    def _decode_per_level_predictions(self, anchors, pred_scores, pred_deltas, score_thresh, topk_candidates,
                                      image_size):
        """detectron2's per-level decoding (threshold, top-k, box decoding); with
        ``clip_before_nms`` the level's boxes are then clipped to ``image_size`` (H, W) and
        the empty ones (width or height 0 after clipping) removed."""
        pred = super()._decode_per_level_predictions(anchors, pred_scores, pred_deltas, score_thresh,
                                                     topk_candidates, image_size)
        if self.clip_before_nms:
            pred.pred_boxes.clip(image_size)
            pred = pred[pred.pred_boxes.nonempty(threshold=0.0)]
        return pred

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        losses = super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if self.balanced_l1 is None:
            return losses
        normalizer = self.loss_normalizer  # updated by the parent call for this batch
        labels = torch.stack(gt_labels)
        pos_mask = (labels >= 0) & (labels != self.num_classes)
        anchors = type(anchors[0]).cat(anchors).tensor
        gt_deltas = torch.stack([self.box2box_transform.get_deltas(anchors, g) for g in gt_boxes])
        pred = torch.cat(pred_anchor_deltas, dim=1)
        loss = balanced_l1_loss(pred[pos_mask], gt_deltas[pos_mask], reduction="sum", **self.balanced_l1)
        losses["loss_box_reg"] = loss / normalizer
        return losses
