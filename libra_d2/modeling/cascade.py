"""LibraCascadeROIHeads: detectron2's CascadeROIHeads with Libra R-CNN's sampling and loss."""
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads

from .box_transform import make_box2box_transform
from .fast_rcnn import LibraFastRCNNOutputLayers
from .roi_heads import LibraSamplingMixin

__all__ = ["LibraCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class LibraCascadeROIHeads(LibraSamplingMixin, CascadeROIHeads):
    """Cascade R-CNN heads with the balanced sampler and Balanced L1.

    * Sampling happens once in a cascade, for the first stage (detectron2 samples the RPN
      proposals, the later stages re-label the previous stage's boxes without sampling):
      that sample is :class:`~libra_d2.modeling.roi_heads.LibraSamplingMixin`'s (``MODEL.LIBRA.POS_SAMPLER`` / ``NEG_SAMPLER``
      and the bin keys; background threshold = ``ROI_BOX_CASCADE_HEAD.IOUS[0]``), with the
      same ``libra/*`` statistics; loss-based samplers ("ohem") score with the first stage.
    * Every stage's predictor is a :class:`LibraFastRCNNOutputLayers` with that stage's
      ``BBOX_REG_WEIGHTS``, so ``ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE: balanced_l1`` applies to
      all stages (parameters ``MODEL.LIBRA.BALANCED_L1``); other loss types are detectron2's.

    Parameter names are detectron2's CascadeROIHeads' (``box_head.{k}``, ``box_predictor.{k}``).
    """

    @classmethod
    def background_iou_thresh(cls, cfg) -> float:
        return cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0]

    def _sampling_box_head(self):
        # the sample feeds the first stage: loss-based samplers score with its head
        return self.box_head[0], self.box_predictor[0]

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            LibraFastRCNNOutputLayers(cfg, head.output_shape, box2box_transform=make_box2box_transform(
                w, cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP))
            for head, w in zip(ret["box_heads"], cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS)
        ]
        return ret
