"""ReferenceMatcher: detectron2's anchor matcher with the reference implementation's rules
for low-quality matches (see docs/semantics.md, "Anchor matching")."""
import torch
from detectron2.modeling.matcher import Matcher

from ..config import validate_min_pos_iou

__all__ = ["ReferenceMatcher"]


class ReferenceMatcher(Matcher):
    """A :class:`detectron2.modeling.matcher.Matcher` whose low-quality matches follow the
    reference implementation (mmdetection's ``MaxIoUAssigner`` with ``match_low_quality``):

    * a prediction that is a ground-truth box's best match (ties included) becomes positive
      only if that IoU is at least ``min_low_quality_iou`` (detectron2: at any IoU);
    * it is assigned to the *last* such box in ground-truth order, even when it was
      already matched to another box by the thresholds (detectron2 keeps its highest-IoU
      box and only changes the label).

    Thresholds, labels and everything else are detectron2's. Input: ``match_quality_matrix``
    (M ground truths x N predictions); output: ``matches`` (N,) int64 and ``match_labels``
    (N,) int8, as detectron2's.
    """

    def __init__(self, thresholds, labels, allow_low_quality_matches=True, min_low_quality_iou=0.0):
        validate_min_pos_iou("ReferenceMatcher", min_low_quality_iou,
                             "MODEL.LIBRA.RPN_MIN_POS_IOU / RETINANET_MIN_POS_IOU")
        super().__init__(thresholds, labels, allow_low_quality_matches=allow_low_quality_matches)
        self.min_low_quality_iou = float(min_low_quality_iou)

    def __call__(self, match_quality_matrix):
        matches, match_labels = super().__call__(match_quality_matrix)
        if not self.allow_low_quality_matches or match_quality_matrix.numel() == 0:
            return matches, match_labels
        best = match_quality_matrix.max(dim=1).values  # (M,) each box's best IoU
        is_best = (match_quality_matrix == best[:, None]) & (best[:, None] >= self.min_low_quality_iou)
        m = match_quality_matrix.shape[0]
        order = torch.arange(1, m + 1, device=matches.device)[:, None]
        last = (is_best.long() * order).max(dim=0).values  # 1-based index of the last such box, 0: none
        hit = last > 0
        matches = torch.where(hit, last - 1, matches)
        match_labels = torch.where(hit, torch.ones_like(match_labels), match_labels)
        return matches, match_labels

    def set_low_quality_matches_(self, match_labels, match_quality_matrix):
        """Done in :meth:`__call__`, which can also reassign the matched box."""
