"""Box-head output layers whose box regression loss can be Balanced L1."""
from detectron2.config import configurable
from detectron2.layers import nonzero_tuple
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..config import check_choice, validate_balanced_l1_args
from .box_transform import make_box2box_transform
from .losses import balanced_l1_loss

__all__ = ["LibraFastRCNNOutputLayers"]


class LibraFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers that also accepts ``box_reg_loss_type="balanced_l1"``.

    The Balanced L1 loss is summed over the foreground proposals' deltas and divided by the
    number of sampled proposals (detectron2's normalisation); ``losses()`` then multiplies
    it by ``BBOX_REG_LOSS_WEIGHT``. Class-specific and class-agnostic regression are both
    supported. Every other loss type is handled by detectron2 unchanged. With
    ``MODEL.LIBRA.REFERENCE_DECODER_CLAMP`` the boxes decode with the reference's clamp.
    """

    @configurable
    def __init__(self, *args, balanced_l1_alpha=0.5, balanced_l1_gamma=1.5, balanced_l1_beta=1.0, **kwargs):
        validate_balanced_l1_args(
            "LibraFastRCNNOutputLayers", None,
            dict(alpha=balanced_l1_alpha, gamma=balanced_l1_gamma, beta=balanced_l1_beta), "BALANCED_L1",
        )
        if "box_reg_loss_type" in kwargs:
            check_choice("LibraFastRCNNOutputLayers(box_reg_loss_type=...) [config key MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE]",
                         kwargs["box_reg_loss_type"], ("smooth_l1", "giou", "diou", "ciou", "balanced_l1"))
        super().__init__(*args, **kwargs)
        self.balanced_l1_alpha = balanced_l1_alpha
        self.balanced_l1_gamma = balanced_l1_gamma
        self.balanced_l1_beta = balanced_l1_beta

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        p = cfg.MODEL.LIBRA.BALANCED_L1
        ret.update(balanced_l1_alpha=p.ALPHA, balanced_l1_gamma=p.GAMMA, balanced_l1_beta=p.BETA)
        if cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP:  # same weights as detectron2 chose (cascade: the stage's)
            ret["box2box_transform"] = make_box2box_transform(ret["box2box_transform"].weights, True)
        return ret

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """Same contract as detectron2's: boxes R x 4, gt_classes R; returns a scalar."""
        if self.box_reg_loss_type != "balanced_l1":
            return super().box_reg_loss(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg_inds, gt_classes[fg_inds]]
        gt_deltas = self.box2box_transform.get_deltas(proposal_boxes[fg_inds], gt_boxes[fg_inds])
        loss = balanced_l1_loss(
            fg_pred_deltas,
            gt_deltas,
            alpha=self.balanced_l1_alpha,
            gamma=self.balanced_l1_gamma,
            beta=self.balanced_l1_beta,
            reduction="sum",
        )
        return loss / max(gt_classes.numel(), 1.0)
