"""A GroupNorm RetinaNet head (``MODEL.RETINANET.NORM: "GN"``) on every supported detectron2.

detectron2 0.6's ``RetinaNetHead`` checks what kind of norm it was given by building one for
a single channel, ``get_norm(norm, 1)``: for ``"GN"`` that is ``GroupNorm(32, 1)``, which
raises, so a GN head cannot be built from a yacs config there (later detectron2 builds the
probe for 32 channels). On such a version, importing libra_d2 makes ``RetinaNetHead``'s
config path hand the head :func:`group_norm` instead of the string ``"GN"``: the same
``GroupNorm(32, C)`` layers, the same parameter names, so checkpoints move between detectron2
versions unchanged. Versions whose head builds with ``"GN"`` are left untouched. LazyConfig
users on 0.6 pass ``norm=group_norm`` (a callable) themselves.
"""
import functools

from torch import nn

__all__ = ["group_norm", "retinanet_head_builds_group_norm", "enable_retinanet_group_norm"]


def group_norm(channels: int) -> nn.GroupNorm:
    """detectron2's ``"GN"`` (``GroupNorm(32, channels)``); for ``channels == 1`` (only a
    type probe asks for that) ``GroupNorm(1, 1)``, which can exist."""
    return nn.GroupNorm(1 if channels == 1 else 32, channels)


def retinanet_head_builds_group_norm() -> bool:
    """Whether detectron2's ``RetinaNetHead`` accepts ``norm="GN"`` as it ships."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

    try:
        RetinaNetHead(input_shape=[ShapeSpec(channels=32)], num_classes=1, num_anchors=1, conv_dims=[32],
                      norm="GN")
    except ValueError:
        return False
    return True


def enable_retinanet_group_norm() -> bool:
    """Where detectron2's RetinaNetHead cannot build ``norm="GN"``, let its config path pass
    :func:`group_norm` instead. Idempotent; returns whether the head's config path was changed."""
    from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

    original = RetinaNetHead.from_config.__func__
    if getattr(original, "_libra_group_norm", False):
        return True
    if retinanet_head_builds_group_norm():
        return False

    @functools.wraps(original)
    def from_config(cls, cfg, input_shape):
        ret = original(cls, cfg, input_shape)
        if ret.get("norm") == "GN":
            ret["norm"] = group_norm
        return ret

    from_config._libra_group_norm = True
    RetinaNetHead.from_config = classmethod(from_config)
    return True
