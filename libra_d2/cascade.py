"""LibraCascadeROIHeads: detectron2's CascadeROIHeads with Libra R-CNN's sampling and loss."""
from detectron2.config import configurable
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads

from .config import validate_libra_config, validate_sampler_args
from .fast_rcnn import LibraFastRCNNOutputLayers
from .roi_heads import LibraROIHeads

__all__ = ["LibraCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class LibraCascadeROIHeads(CascadeROIHeads):
    """Cascade R-CNN heads with the balanced sampler and Balanced L1.

    * Sampling happens once in a cascade, for the first stage (detectron2 samples the RPN
      proposals, the later stages re-label the previous stage's boxes without sampling):
      that sample is :class:`LibraROIHeads`' (``MODEL.LIBRA.POS_SAMPLER`` / ``NEG_SAMPLER``
      and the bin keys; background threshold = ``ROI_BOX_CASCADE_HEAD.IOUS[0]``), with the
      same ``libra/*`` statistics.
    * Every stage's predictor is a :class:`LibraFastRCNNOutputLayers` with that stage's
      ``BBOX_REG_WEIGHTS``, so ``ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE: balanced_l1`` applies to
      all stages (parameters ``MODEL.LIBRA.BALANCED_L1``); other loss types are detectron2's.

    Parameter names are detectron2's CascadeROIHeads' (``box_head.{k}``, ``box_predictor.{k}``).
    """

    sampler_method = "auto"
    _sample_balanced = LibraROIHeads._sample_balanced
    label_and_sample_proposals = LibraROIHeads.label_and_sample_proposals
    _log_sampling_stats = LibraROIHeads._log_sampling_stats

    @configurable
    def __init__(self, *, pos_sampler="instance_balanced", neg_sampler="iou_balanced", floor_thresh=-1.0,
                 floor_fraction=0.0, num_bins=3, neg_bin_upper="max_iou", bg_iou_thresh=0.5, **kwargs):
        validate_sampler_args(type(self).__name__, pos_sampler, neg_sampler, floor_thresh, floor_fraction, num_bins,
                              neg_bin_upper, bg_iou_thresh)
        super().__init__(**kwargs)
        self.pos_sampler, self.neg_sampler = pos_sampler, neg_sampler
        self.floor_thresh, self.floor_fraction = float(floor_thresh), float(floor_fraction)
        self.num_bins, self.neg_bin_upper, self.bg_iou_thresh = int(num_bins), neg_bin_upper, float(bg_iou_thresh)

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_libra_config(cfg)
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.LIBRA
        ret.update(pos_sampler=c.POS_SAMPLER, neg_sampler=c.NEG_SAMPLER, floor_thresh=c.FLOOR_THRESH,
                   floor_fraction=c.FLOOR_FRACTION, num_bins=c.NUM_BINS, neg_bin_upper=c.NEG_BIN_UPPER,
                   bg_iou_thresh=cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0])
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            LibraFastRCNNOutputLayers(cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w))
            for head, w in zip(ret["box_heads"], cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS)
        ]
        return ret
