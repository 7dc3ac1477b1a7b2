"""LibraRPN: detectron2's RPN with a per-image negative cap and optional Balanced L1."""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.utils.events import get_event_storage

from ..config import check_neg_pos_ub, require_libra_config, split_balanced_l1, validate_balanced_l1_args
from .box_transform import make_box2box_transform
from .losses import dense_balanced_l1_loss
from .matcher import ReferenceMatcher
from .sampling import random_subset_mask

__all__ = ["LibraRPN", "cap_negatives"]


def cap_negatives(label: torch.Tensor, batch_size: int, positive_fraction: float, neg_pos_ub: float, generator=None,
                  subset_sampler=random_subset_mask):
    """Uniformly subsample anchor labels (1 pos, 0 neg, -1 ignore) in place, detectron2-style,
    but with at most ``int(neg_pos_ub * max(1, #sampled positives))`` negatives when
    ``neg_pos_ub >= 0``. ``subset_sampler(candidates, num, generator) -> bool mask`` draws
    each subset (default: uniform). Returns ``label``."""
    pos = label == 1
    neg = label == 0
    pos_mask = subset_sampler(pos, int(batch_size * positive_fraction), generator)
    num_pos = pos_mask.sum()
    num_neg = batch_size - num_pos
    if neg_pos_ub >= 0:
        num_neg = torch.minimum(num_neg, torch.floor(neg_pos_ub * num_pos.clamp(min=1).double()).long())
    neg_mask = subset_sampler(neg, num_neg, generator)
    label.fill_(-1)
    label[pos_mask] = 1
    label[neg_mask] = 0
    return label


@PROPOSAL_GENERATOR_REGISTRY.register()
class LibraRPN(RPN):
    """RPN with Libra R-CNN's options.

    * ``MODEL.LIBRA.RPN_NEG_POS_UB``: per image, at most UB negative anchors per sampled
      positive (``max(1, #pos) * UB``); -1 keeps detectron2's sampling exactly. With the cap
      on, both RPN losses are divided by the number of anchors actually sampled (positives +
      negatives, summed over the batch), as the reference implementation does; with it off,
      by detectron2's fixed ``BATCH_SIZE_PER_IMAGE * #images``. (Keeping the fixed
      normaliser under the cap would shrink the RPN's gradient by up to 256/5 on images
      with few positive anchors.)
    * ``MODEL.LIBRA.REFERENCE_MATCHER``: the reference's low-quality matching rule
      (:class:`~libra_d2.modeling.matcher.ReferenceMatcher`, minimum IoU ``MODEL.LIBRA.RPN_MIN_POS_IOU``).
    * ``MODEL.LIBRA.REFERENCE_DECODER_CLAMP``: the reference's decoding clamp for the proposals
      (:class:`~libra_d2.modeling.box_transform.ReferenceClampBox2BoxTransform`).
    * ``MODEL.RPN.BBOX_REG_LOSS_TYPE: balanced_l1``: Balanced L1 on the anchor deltas with
      ``MODEL.LIBRA.RPN_BALANCED_L1``, under the same normaliser, scaled by its loss weight.
    """

    @configurable
    def __init__(self, *args, neg_pos_ub: float = -1.0, balanced_l1=None, subset_sampler=random_subset_mask, **kwargs):
        key = "LibraRPN(neg_pos_ub=...) [config key MODEL.LIBRA.RPN_NEG_POS_UB]"
        check_neg_pos_ub(key, neg_pos_ub)
        validate_balanced_l1_args("LibraRPN", "balanced_l1", balanced_l1, "RPN_BALANCED_L1")
        super().__init__(*args, **kwargs)
        self.neg_pos_ub = float(neg_pos_ub)
        self.balanced_l1 = balanced_l1  # None or dict(alpha, gamma, beta)
        if not callable(subset_sampler):
            raise TypeError(f"LibraRPN(subset_sampler=...) must be callable, got {type(subset_sampler).__name__}")
        # the capped sampling's draw, fn(candidates, num, generator) -> bool mask (a seam:
        # e.g. a fixed priority to take the anchors another implementation takes)
        self.subset_sampler = subset_sampler

    @classmethod
    def from_config(cls, cfg, input_shape):
        require_libra_config(cfg)
        parent_cfg, params = split_balanced_l1(cfg, "RPN", "RPN_BALANCED_L1")
        ret = super().from_config(parent_cfg, input_shape)
        ret["neg_pos_ub"] = cfg.MODEL.LIBRA.RPN_NEG_POS_UB
        if cfg.MODEL.LIBRA.REFERENCE_MATCHER:
            ret["anchor_matcher"] = ReferenceMatcher(cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS,
                                                     min_low_quality_iou=cfg.MODEL.LIBRA.RPN_MIN_POS_IOU)
        ret["balanced_l1"] = params
        ret["box2box_transform"] = make_box2box_transform(cfg.MODEL.RPN.BBOX_REG_WEIGHTS,
                                                          cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP)
        return ret

    def _subsample_labels(self, label):
        if self.neg_pos_ub < 0:
            return super()._subsample_labels(label)
        return cap_negatives(label, self.batch_size_per_image, self.positive_fraction, self.neg_pos_ub,
                             subset_sampler=self.subset_sampler)

    def loss_normalizer(self, gt_labels):
        """The divisor of both RPN losses for a batch of sampled anchor labels (list of
        ``(num_anchors,)`` tensors, 1 / 0 / -1): detectron2's ``BATCH_SIZE_PER_IMAGE *
        #images`` with the cap off; the number of sampled anchors (at least 1) with it on."""
        if self.neg_pos_ub < 0:
            return float(self.batch_size_per_image * len(gt_labels))
        return float(max(1, sum(int((g >= 0).sum()) for g in gt_labels)))

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """detectron2's two RPN losses (with Balanced L1 as the box loss when configured), each
        computed once, divided by :meth:`loss_normalizer` and scaled by its loss weight."""
        fixed = float(self.batch_size_per_image * len(gt_labels))  # detectron2's divisor
        normalizer = self.loss_normalizer(gt_labels)
        if self.balanced_l1 is None:
            losses = super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        else:
            losses = self._balanced_l1_losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas,
                                              gt_boxes, fixed, normalizer)
        if normalizer != fixed:
            losses["loss_rpn_cls"] = losses["loss_rpn_cls"] * (fixed / normalizer)
            if self.balanced_l1 is None:
                losses["loss_rpn_loc"] = losses["loss_rpn_loc"] * (fixed / normalizer)
        return losses

    def _balanced_l1_losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes, fixed,
                            normalizer):
        """The objectness loss as detectron2's RPN computes it (divided by the fixed divisor,
        rescaled by the caller) and Balanced L1 on the positive anchors' deltas."""
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)
        pos_mask = labels == 1
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", pos_mask.sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (labels == 0).sum().item() / num_images)
        valid = labels >= 0
        objectness = F.binary_cross_entropy_with_logits(
            cat(pred_objectness_logits, dim=1)[valid], labels[valid].to(torch.float32), reduction="sum")
        loc = dense_balanced_l1_loss(anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
                                     **self.balanced_l1)
        weight = getattr(self, "loss_weight", {})
        return {"loss_rpn_cls": objectness / fixed * weight.get("loss_rpn_cls", 1.0),
                "loss_rpn_loc": loc / normalizer * weight.get("loss_rpn_loc", 1.0)}
