"""LibraRetinaNet: RetinaNet whose box loss can be Balanced L1 (use with the BFP backbone)."""
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss_jit

from ..config import check_choice, require_libra_config, split_balanced_l1, validate_balanced_l1_args
from .box_transform import make_box2box_transform
from .losses import dense_balanced_l1_loss
from .matcher import ReferenceMatcher

__all__ = ["LibraRetinaNet", "LOSS_NORMALIZERS"]

LOSS_NORMALIZERS = ("moving_average", "batch")


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

    Training as the reference does (both off by default, detectron2's conventions):
    ``MODEL.LIBRA.RETINANET_LOSS_NORMALIZER: "batch"`` divides both losses by this batch's
    foreground count instead of detectron2's moving average of it (initial 100, momentum
    0.9); ``MODEL.LIBRA.RETINANET_IGNORE_PADDING_ANCHORS: True`` leaves the anchors outside
    each image's own area (those in the batch's padding) out of matching and of both losses.
    """

    @configurable
    def __init__(self, *args, balanced_l1=None, clip_before_nms=False, loss_normalizer="moving_average",
                 ignore_padding_anchors=False, **kwargs):
        validate_balanced_l1_args("LibraRetinaNet", "balanced_l1", balanced_l1, "RETINANET_BALANCED_L1")
        check_choice("LibraRetinaNet(loss_normalizer=...) [config key MODEL.LIBRA.RETINANET_LOSS_NORMALIZER]",
                     loss_normalizer, LOSS_NORMALIZERS)
        super().__init__(*args, **kwargs)
        self.balanced_l1 = balanced_l1
        self.clip_before_nms = bool(clip_before_nms)
        self.loss_normalizer_mode = loss_normalizer  # (self.loss_normalizer is detectron2's moving average)
        self.ignore_padding_anchors = bool(ignore_padding_anchors)
        self.last_loss_normalizer = None

    @classmethod
    def from_config(cls, cfg):
        require_libra_config(cfg)
        parent_cfg, params = split_balanced_l1(cfg, "RETINANET", "RETINANET_BALANCED_L1")
        ret = super().from_config(parent_cfg)
        ret["balanced_l1"] = params
        ret["clip_before_nms"] = cfg.MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS
        ret["loss_normalizer"] = cfg.MODEL.LIBRA.RETINANET_LOSS_NORMALIZER
        ret["ignore_padding_anchors"] = cfg.MODEL.LIBRA.RETINANET_IGNORE_PADDING_ANCHORS
        ret["box2box_transform"] = make_box2box_transform(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS,
                                                          cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP)
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

    @torch.no_grad()
    def label_anchors(self, anchors, gt_instances):
        """detectron2's labelling; with ``ignore_padding_anchors``, each image's anchors are
        matched among those inside its own area only (the rest get label -1, ignored)."""
        if not self.ignore_padding_anchors:
            return super().label_anchors(anchors, gt_instances)
        all_anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for gt_per_image in gt_instances:
            inside = self.anchors_inside_image(anchors, gt_per_image.image_size)
            labels, boxes = super().label_anchors([all_anchors[inside]], [gt_per_image])
            full_labels = torch.full((len(all_anchors),), -1, dtype=labels[0].dtype, device=labels[0].device)
            full_labels[inside] = labels[0]
            full_boxes = torch.zeros_like(all_anchors.tensor)
            full_boxes[inside] = boxes[0]
            gt_labels.append(full_labels)
            matched_gt_boxes.append(full_boxes)
        return gt_labels, matched_gt_boxes

    def anchors_inside_image(self, anchors, image_size):
        """bool[R] over the anchors of all levels (``anchors``: list of Boxes, one per level):
        True for an anchor whose feature-map cell lies inside the image's own area, its
        (H, W) rounded up to the backbone's size divisibility, i.e. cell row < ceil(H' / stride)
        and column < ceil(W' / stride): the reference's valid-anchor rule."""
        div = max(int(self.backbone.size_divisibility), 1)
        h, w = (math.ceil(int(v) / div) * div for v in image_size)
        offset = float(getattr(self.anchor_generator, "offset", 0.0))
        inside = []
        for boxes, stride in zip(anchors, self.anchor_generator.strides):
            # an anchor's cell from its centre, (cell + offset) * stride up to float rounding
            cell = torch.round(boxes.get_centers() / stride - offset)
            inside.append((cell[:, 1] < math.ceil(h / stride)) & (cell[:, 0] < math.ceil(w / stride)))
        return torch.cat(inside)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """detectron2's RetinaNet losses; with Balanced L1, the focal loss as detectron2 computes
        it and Balanced L1 on the foreground anchors' deltas. Both are divided by detectron2's
        moving average of the foreground count, or with ``loss_normalizer="batch"`` by this
        batch's foreground count (at least 1); ``self.last_loss_normalizer`` keeps the divisor."""
        if self.balanced_l1 is None and self.loss_normalizer_mode == "moving_average":
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        valid_mask = labels >= 0
        pos_mask = valid_mask & (labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        if self.loss_normalizer_mode == "batch":
            normalizer = max(num_pos_anchors, 1)
        else:
            normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)
        self.last_loss_normalizer = float(normalizer)
        target = F.one_hot(labels[valid_mask], num_classes=self.num_classes + 1)[:, :-1]  # background: no class
        loss_cls = sigmoid_focal_loss_jit(cat(pred_logits, dim=1)[valid_mask], target.to(pred_logits[0].dtype),
                                          alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="sum")
        if self.balanced_l1 is None:
            loss_box = _dense_box_regression_loss(anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes,
                                                  pos_mask, box_reg_loss_type=self.box_reg_loss_type,
                                                  smooth_l1_beta=self.smooth_l1_beta)
        else:
            loss_box = dense_balanced_l1_loss(anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
                                              **self.balanced_l1)
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box / normalizer}
