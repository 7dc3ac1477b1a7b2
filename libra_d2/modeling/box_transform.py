"""The reference implementation's box decoding clamp as a detectron2 ``Box2BoxTransform``."""
import torch
from detectron2.modeling.box_regression import Box2BoxTransform

__all__ = ["ReferenceClampBox2BoxTransform", "make_box2box_transform"]


class ReferenceClampBox2BoxTransform(Box2BoxTransform):
    """detectron2's ``Box2BoxTransform`` whose decoding bounds the predicted log-scale
    ``dw``, ``dh`` (after dividing by the weights) at both ends, ``|d| <= scale_clamp``, as
    the reference's decoder does; detectron2 bounds them from above only, so a prediction
    that shrinks a box below ``exp(-scale_clamp)`` (1/62.5) of its anchor or proposal decodes
    to a smaller box there. Encoding (``get_deltas``) and every other value are unchanged.

    ``apply_deltas(deltas, boxes)``: deltas (N, k*4), boxes (N, 4) -> boxes (N, k*4).
    """

    def apply_deltas(self, deltas, boxes):
        deltas = deltas.float()
        _, _, ww, wh = self.weights
        dw = deltas[:, 2::4].clamp(min=-self.scale_clamp * ww)
        dh = deltas[:, 3::4].clamp(min=-self.scale_clamp * wh)
        bounded = torch.stack((deltas[:, 0::4], deltas[:, 1::4], dw, dh), dim=-1).reshape(deltas.shape)
        return super().apply_deltas(bounded, boxes)


def make_box2box_transform(weights, reference_clamp: bool) -> Box2BoxTransform:
    """detectron2's transform, or with ``reference_clamp`` (``MODEL.LIBRA.REFERENCE_DECODER_CLAMP``)
    :class:`ReferenceClampBox2BoxTransform`, for the given (wx, wy, ww, wh) weights."""
    cls = ReferenceClampBox2BoxTransform if reference_clamp else Box2BoxTransform
    return cls(weights=tuple(weights))
