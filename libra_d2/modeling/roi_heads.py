"""LibraSamplingMixin (balanced proposal sampling for any detectron2 ROI heads) and LibraROIHeads."""
from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from ..config import require_libra_config, validate_sampler_args
from .fast_rcnn import LibraFastRCNNOutputLayers
from .roi_samplers import SamplingContext, get_roi_sampler, registered_samplers, sampler_needs_losses
from .sampling import resolve_sampler_method

__all__ = ["LibraROIHeads", "LibraSamplingMixin"]


class LibraSamplingMixin:
    """Libra R-CNN's training sample of proposals for a detectron2 ROI-heads class (mixed in
    before it: ``class X(LibraSamplingMixin, StandardROIHeads)``).

    Matching is the host class's (``proposal_matcher``, ground truth appended when
    ``PROPOSAL_APPEND_GT``); the numbers of positives and negatives are detectron2's
    ``subsample_labels`` counts; only *which* proposals are taken changes:

    * positives: ``pos_sampler`` (``MODEL.LIBRA.POS_SAMPLER``): "instance_balanced", "random",
      "ohem" or any name registered in :data:`~libra_d2.modeling.roi_samplers.ROI_SAMPLER_REGISTRY`;
    * negatives: ``neg_sampler`` (``MODEL.LIBRA.NEG_SAMPLER``): "iou_balanced", "random",
      "ohem" or a registered name; the IoU-balanced sampler reads ``floor_thresh``,
      ``floor_fraction``, ``num_bins`` and ``neg_bin_upper`` (the ``MODEL.LIBRA`` keys of the
      same names; ``bg_iou_thresh`` is the host's background threshold). Semantics:
      docs/semantics.md.

    With both "random" the sample is detectron2's own ``subsample_labels``. A sampler with
    ``needs_losses`` ("ohem") makes the head score every proposal of the image with its box
    classifier under ``no_grad`` before sampling; the box head then trains on the sample only.
    The constructor validates every argument (yacs, LazyConfig and direct Python use alike).

    Per iteration it writes to the EventStorage: ``libra/neg_iou_mean`` (mean max-IoU of the
    sampled negatives) and ``libra/neg_share_bin{i}`` (share of sampled negatives in each of
    NUM_BINS equal bins over [max(FLOOR_THRESH, 0), bg_iou_thresh): a fixed reference grid,
    so the curves are comparable across images and runs).
    """

    # "auto": numpy path for CPU tensors (no device to sync with), sync-free torch path on
    # accelerators; "numpy" / "torch" force one (both implement the same semantics; "numpy"
    # on accelerator tensors copies them to the host).
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
        sampling_generator=None,
        **kwargs,
    ):
        validate_sampler_args(type(self).__name__, pos_sampler, neg_sampler, floor_thresh, floor_fraction, num_bins,
                              neg_bin_upper, bg_iou_thresh,
                              samplers={r: registered_samplers(r) for r in ("positive", "negative")})
        super().__init__(**kwargs)
        self.pos_sampler = pos_sampler
        self.neg_sampler = neg_sampler
        self.floor_thresh = float(floor_thresh)
        self.floor_fraction = float(floor_fraction)
        self.num_bins = int(num_bins)
        self.neg_bin_upper = neg_bin_upper
        self.bg_iou_thresh = float(bg_iou_thresh)
        self._pos_sampler_fn = get_roi_sampler(pos_sampler, "positive")
        self._neg_sampler_fn = get_roi_sampler(neg_sampler, "negative")
        # the RoI samplers' random draws: None takes torch's global generator (SEED governs it);
        # a torch.Generator here makes the samples reproducible apart from everything else
        self.sampling_generator = sampling_generator
        self._features_for_sampling = None

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
        )
        return ret

    def _sampling_context(self, matched_idxs, gt_classes, max_iou, losses=None):
        on_cpu = resolve_sampler_method(self.sampler_method, max_iou.device) == "numpy"
        return SamplingContext(
            matched_idxs=matched_idxs, gt_classes=gt_classes, max_iou=max_iou, num_classes=self.num_classes,
            batch_size=self.batch_size_per_image, losses=losses, generator=self.sampling_generator,
            on_cpu=on_cpu, num_bins=self.num_bins,
            floor_thresh=self.floor_thresh, floor_fraction=self.floor_fraction,
            bin_upper=None if self.neg_bin_upper == "max_iou" else self.bg_iou_thresh,
        )

    def _sample(self, ctx: SamplingContext) -> torch.Tensor:
        """bool[N] mask of the proposals to train on: positives first (detectron2's cap), then
        negatives up to the batch size."""
        positive = (ctx.gt_classes != -1) & (ctx.gt_classes != self.num_classes)
        negative = ctx.gt_classes == self.num_classes
        pos_mask = self._pos_sampler_fn(ctx, positive, int(self.batch_size_per_image * self.positive_fraction))
        taken = int(pos_mask.sum()) if ctx.on_cpu else pos_mask.sum()  # a tensor on accelerators: no sync
        return pos_mask | self._neg_sampler_fn(ctx, negative, self.batch_size_per_image - taken)

    def _needs_losses(self) -> bool:
        return sampler_needs_losses(self._pos_sampler_fn) or sampler_needs_losses(self._neg_sampler_fn)

    def _sampling_box_head(self):
        """(box head, box predictor) that score the proposals for loss-based samplers."""
        return self.box_head, self.box_predictor

    @torch.no_grad()
    def _classification_losses(self, features, proposals: List[Instances], gt_classes: List[torch.Tensor]):
        """Per-proposal classification loss (softmax cross-entropy of the box predictor's
        scores; ignored proposals get 0) of every proposal of every image, under ``no_grad``."""
        head, predictor = self._sampling_box_head()
        x = self.box_pooler([features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals])
        scores = predictor(head(x))[0]
        labels = torch.cat(gt_classes)
        losses = F.cross_entropy(scores, labels.clamp(min=0), reduction="none").masked_fill(labels < 0, 0.0)
        return losses.split([len(p) for p in proposals])

    def forward(self, images, features, proposals, targets=None):
        # loss-based samplers score the proposals with the box head: they need the features
        self._features_for_sampling = features if self.training and self._needs_losses() else None
        try:
            return super().forward(images, features, proposals, targets)
        finally:
            self._features_for_sampling = None

    @torch.no_grad()
    def match_proposals(self, proposals: List[Instances], targets: List[Instances]):
        """Label each image's proposals as this head does before sampling: per image a tuple
        ``(matched_idxs, gt_classes, max_iou)`` of ``(N,)`` tensors (index of the matched
        ground-truth box, its class with background = ``num_classes`` and ignored = -1, and
        the proposal's largest IoU with any ground-truth box; 0 without ground truth).
        Ground truth is appended to the proposals first when ``proposal_append_gt``; returns
        ``(proposals, labels)``."""
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        matched = []
        for props, tgts in zip(proposals, targets):
            iou = pairwise_iou(tgts.gt_boxes, props.proposal_boxes)  # G x N (0 x N without gt)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            if len(tgts) > 0:
                gt_classes = tgts.gt_classes[matched_idxs]
                gt_classes[matched_labels == 0] = self.num_classes
                gt_classes[matched_labels == -1] = -1
                max_iou = iou.max(dim=0).values
            else:
                gt_classes = torch.full_like(matched_idxs, self.num_classes)
                max_iou = torch.zeros(len(props), device=iou.device)
            matched.append((matched_idxs, gt_classes, max_iou))
        return proposals, matched

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances],
                                   features=None) -> List[Instances]:
        """Match proposals to targets (:meth:`match_proposals`), then sample per MODEL.LIBRA
        (see class docstring). ``features`` (the backbone's, by name) are needed by loss-based
        samplers ("ohem"); inside :meth:`forward` the head passes its own.

        Returns the sampled proposals of each image with ``gt_classes`` (background =
        num_classes) and, when the image has ground truth, ``gt_boxes`` and the other
        ``gt_*`` fields of the matched target.
        """
        proposals, matched = self.match_proposals(proposals, targets)
        uniform = self.pos_sampler == "random" and self.neg_sampler == "random"
        features = features if features is not None else self._features_for_sampling
        losses = [None] * len(proposals)
        if not uniform and self._needs_losses():
            if features is None:
                raise ValueError(f"{type(self).__name__}: a loss-based sampler ({self.pos_sampler!r} / "
                                 f"{self.neg_sampler!r}) needs the features: pass features=")
            losses = self._classification_losses(features, proposals, [m[1] for m in matched])
        out, stats_iou, stats_fg = [], [], []
        for props, tgts, (matched_idxs, gt_classes, max_iou), loss in zip(proposals, targets, matched, losses):
            has_gt = len(tgts) > 0
            if uniform:
                fg, bg = subsample_labels(gt_classes, self.batch_size_per_image, self.positive_fraction, self.num_classes)
                sampled = torch.cat([fg, bg])
            else:
                mask = self._sample(self._sampling_context(matched_idxs, gt_classes, max_iou, loss))
                sampled = torch.nonzero(mask).squeeze(1)
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
