"""LibraSamplingMixin (balanced proposal sampling for any detectron2 ROI heads) and LibraROIHeads."""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .config import require_libra_config, validate_sampler_args
from .engine.trainer_keys import guard_trainer_only_settings, trainer_only_settings
from .fast_rcnn import LibraFastRCNNOutputLayers
from .sampling import (
    instance_balanced_positives_mask,
    iou_balanced_negatives_select,
    random_subset_mask,
    sample_instance_balanced_positives,
    sample_iou_balanced_negatives,
)

__all__ = ["LibraROIHeads", "LibraSamplingMixin"]


class LibraSamplingMixin:
    """Libra R-CNN's training sample of proposals for a detectron2 ROI-heads class (mixed in
    before it: ``class X(LibraSamplingMixin, StandardROIHeads)``).

    Matching is the host class's (``proposal_matcher``, ground truth appended when
    ``PROPOSAL_APPEND_GT``); the numbers of positives and negatives are detectron2's
    ``subsample_labels`` counts; only *which* proposals are taken changes:

    * positives: ``pos_sampler`` (``MODEL.LIBRA.POS_SAMPLER``) "instance_balanced" or "random";
    * negatives: ``neg_sampler`` (``MODEL.LIBRA.NEG_SAMPLER``) "iou_balanced" or "random", with
      ``floor_thresh``, ``floor_fraction``, ``num_bins`` and ``neg_bin_upper`` (the
      ``MODEL.LIBRA`` keys of the same names; ``bg_iou_thresh`` is the host's background
      threshold). Semantics: docs/semantics.md.

    With both "random" the sample is detectron2's own ``subsample_labels``. The constructor
    validates every argument (yacs, LazyConfig and direct Python use alike).

    Per iteration it writes to the EventStorage: ``libra/neg_iou_mean`` (mean max-IoU of the
    sampled negatives) and ``libra/neg_share_bin{i}`` (share of sampled negatives in each of
    NUM_BINS equal bins over [max(FLOOR_THRESH, 0), bg_iou_thresh): a fixed reference grid,
    so the curves are comparable across images and runs).
    """

    # "auto": numpy path for CPU tensors (no device to sync with), sync-free torch path on
    # accelerators; "numpy" / "torch" force one (both implement the same semantics).
    sampler_method = "auto"

    @configurable
    def __init__(
        self,
        *,
        pos_sampler: str = "instance_balanced",
        neg_sampler: str = "iou_balanced",
        floor_thresh: float = -1.0,
        floor_fraction: float = 0.0,
        num_bins: int = 3,
        neg_bin_upper: str = "max_iou",
        bg_iou_thresh: float = 0.5,
        trainer_only_settings=(),
        **kwargs,
    ):
        validate_sampler_args(type(self).__name__, pos_sampler, neg_sampler, floor_thresh, floor_fraction, num_bins,
                              neg_bin_upper, bg_iou_thresh)
        super().__init__(**kwargs)
        self.pos_sampler = pos_sampler
        self.neg_sampler = neg_sampler
        self.floor_thresh = float(floor_thresh)
        self.floor_fraction = float(floor_fraction)
        self.num_bins = int(num_bins)
        self.neg_bin_upper = neg_bin_upper
        self.bg_iou_thresh = float(bg_iou_thresh)
        guard_trainer_only_settings(self, list(trainer_only_settings))

    @classmethod
    def background_iou_thresh(cls, cfg) -> float:
        """The host's background threshold (top of the "bg_thresh" bins and the statistics grid)."""
        return cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]

    @classmethod
    def from_config(cls, cfg, input_shape):
        require_libra_config(cfg)
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.LIBRA
        ret.update(
            pos_sampler=c.POS_SAMPLER,
            neg_sampler=c.NEG_SAMPLER,
            floor_thresh=c.FLOOR_THRESH,
            floor_fraction=c.FLOOR_FRACTION,
            num_bins=c.NUM_BINS,
            neg_bin_upper=c.NEG_BIN_UPPER,
            bg_iou_thresh=cls.background_iou_thresh(cfg),
            trainer_only_settings=trainer_only_settings(cfg),
        )
        return ret

    def _sample_balanced(self, matched_idxs, gt_classes, max_iou):
        """bool[N] mask of the proposals to train on (positives and negatives)."""
        positive = (gt_classes != -1) & (gt_classes != self.num_classes)
        negative = gt_classes == self.num_classes
        pos_cap = int(self.batch_size_per_image * self.positive_fraction)
        kw = dict(
            num_bins=self.num_bins,
            floor_thresh=self.floor_thresh,
            floor_fraction=self.floor_fraction,
            upper=None if self.neg_bin_upper == "max_iou" else self.bg_iou_thresh,
        )
        if self.sampler_method == "numpy" or (self.sampler_method == "auto" and max_iou.device.type == "cpu"):
            # CPU: nothing to synchronise with; compact numpy paths
            mask = torch.zeros_like(positive)
            if self.pos_sampler == "instance_balanced":
                mask[sample_instance_balanced_positives(matched_idxs, positive, pos_cap)] = True
            else:
                mask |= random_subset_mask(positive, pos_cap)
            num_neg = self.batch_size_per_image - int(mask.sum())
            if self.neg_sampler == "iou_balanced":
                mask[sample_iou_balanced_negatives(max_iou, negative, num_neg, **kw)] = True
            else:
                mask |= random_subset_mask(negative, num_neg)
            return mask
        # accelerators: sync-free paths, counts stay on the device
        if self.pos_sampler == "instance_balanced":
            pos_mask = instance_balanced_positives_mask(matched_idxs, positive, pos_cap)
        else:
            pos_mask = random_subset_mask(positive, pos_cap)
        num_neg = self.batch_size_per_image - pos_mask.sum()
        if self.neg_sampler != "iou_balanced":
            return pos_mask | random_subset_mask(negative, num_neg)
        idx, keep = iou_balanced_negatives_select(max_iou, negative, num_neg, max_num=self.batch_size_per_image, **kw)
        # pos_mask | (negatives picked); duplicate entries of idx carry keep=False
        marked = pos_mask.to(torch.int32).index_put_((idx,), keep.to(torch.int32), accumulate=True)
        return marked > 0

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Match proposals to targets, then sample per MODEL.LIBRA (see class docstring).

        Returns the sampled proposals of each image with ``gt_classes`` (background =
        num_classes) and, when the image has ground truth, ``gt_boxes`` and the other
        ``gt_*`` fields of the matched target.
        """
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        uniform = self.pos_sampler == "random" and self.neg_sampler == "random"
        out, stats_iou, stats_fg = [], [], []
        for props, tgts in zip(proposals, targets):
            has_gt = len(tgts) > 0
            iou = pairwise_iou(tgts.gt_boxes, props.proposal_boxes)  # G x N (0 x N without gt)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            if has_gt:
                gt_classes = tgts.gt_classes[matched_idxs]
                gt_classes[matched_labels == 0] = self.num_classes
                gt_classes[matched_labels == -1] = -1
                max_iou = iou.max(dim=0).values
            else:
                gt_classes = torch.full_like(matched_idxs, self.num_classes)
                max_iou = torch.zeros(len(props), device=iou.device)
            if uniform:
                fg, bg = subsample_labels(gt_classes, self.batch_size_per_image, self.positive_fraction, self.num_classes)
                sampled = torch.cat([fg, bg])
            else:
                sampled = torch.nonzero(self._sample_balanced(matched_idxs, gt_classes, max_iou)).squeeze(1)
            props = props[sampled]
            props.gt_classes = gt_classes[sampled]
            if has_gt:
                sampled_targets = matched_idxs[sampled]
                for name, value in tgts.get_fields().items():
                    if name.startswith("gt_") and not props.has(name):
                        props.set(name, value[sampled_targets])
            stats_iou.append(torch.where(props.gt_classes == self.num_classes, max_iou[sampled], -1.0))
            stats_fg.append((props.gt_classes != self.num_classes).sum())
            out.append(props)
        self._log_sampling_stats(stats_iou, stats_fg)
        return out

    def _log_sampling_stats(self, neg_iou_per_image, num_fg_per_image):
        try:
            storage = get_event_storage()
        except AssertionError:  # called outside a training loop (e.g. a tool)
            return
        neg_iou = torch.cat(neg_iou_per_image)
        is_neg = neg_iou >= 0
        neg_iou = neg_iou[is_neg]
        lo = max(self.floor_thresh, 0.0)
        width = max(self.bg_iou_thresh - lo, 1e-6) / self.num_bins
        bins = ((neg_iou - lo) / width).floor().clamp(0, self.num_bins - 1).long()
        counts = torch.bincount(bins, minlength=self.num_bins).float()
        n_img = max(len(num_fg_per_image), 1)
        values = torch.cat(
            [
                torch.stack([torch.stack(num_fg_per_image).float().sum() / n_img, is_neg.sum().float() / n_img]),
                neg_iou.mean().reshape(1) if neg_iou.numel() else torch.zeros(1, device=neg_iou.device),
                counts / counts.sum().clamp(min=1),
            ]
        ).tolist()  # one device-to-host copy for all statistics
        storage.put_scalar("roi_head/num_fg_samples", values[0])
        storage.put_scalar("roi_head/num_bg_samples", values[1])
        storage.put_scalar("libra/neg_iou_mean", values[2])
        for i, share in enumerate(values[3:]):
            storage.put_scalar(f"libra/neg_share_bin{i}", share)


@ROI_HEADS_REGISTRY.register()
class LibraROIHeads(LibraSamplingMixin, StandardROIHeads):
    """detectron2's ``StandardROIHeads`` with Libra R-CNN's balanced sampling
    (:class:`LibraSamplingMixin`) and :class:`LibraFastRCNNOutputLayers` as the box predictor,
    so ``ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE`` may be "balanced_l1"."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = LibraFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
