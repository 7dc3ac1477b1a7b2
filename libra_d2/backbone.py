"""FPN backbones with the Balanced Feature Pyramid, registered in detectron2's BACKBONE_REGISTRY:
``build_resnet_bfp_backbone`` (p2..p6, Faster/Mask/Cascade R-CNN) and
``build_retinanet_resnet_bfp_backbone`` (p3..p7, RetinaNet)."""
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .bfp import BFP
from .config import require_libra_config
from .engine.trainer_keys import guard_trainer_only_settings, trainer_only_settings

__all__ = ["BFPFPN", "LastLevelP6P7NoReLU", "build_resnet_bfp_backbone", "build_retinanet_resnet_bfp_backbone"]


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """RetinaNet's extra levels as the reference builds them: P6 = conv(C5), P7 = conv(P6),
    with no ReLU in between (detectron2's :class:`LastLevelP6P7` applies one). Same
    parameters and state-dict names (``p6``, ``p7``)."""

    def forward(self, c5):
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


class BFPFPN(FPN):
    """Detectron2's FPN followed by a :class:`BFP` over all of its outputs.

    Output names, strides, channels, ``size_divisibility`` and the FPN's state-dict names are
    stock FPN's (the BFP adds keys under ``bfp.``), so detectron2 FPN checkpoints load.
    """

    def __init__(self, *args, refine_level: int = 2, refine_type: str = "non_local", **kwargs):
        super().__init__(*args, **kwargs)
        self.bfp = BFP(self._out_feature_channels[self._out_features[0]], len(self._out_features), refine_level, refine_type)

    def forward(self, x):
        results = super().forward(x)
        outs = self.bfp([results[f] for f in self._out_features])
        return dict(zip(self._out_features, outs))


def _bfp_args(cfg):
    """The BFP's arguments from ``MODEL.BFP`` (the BFP constructor checks them)."""
    require_libra_config(cfg)
    return dict(refine_level=cfg.MODEL.BFP.REFINE_LEVEL, refine_type=cfg.MODEL.BFP.REFINE_TYPE)


@BACKBONE_REGISTRY.register()
def build_resnet_bfp_backbone(cfg, input_shape):
    """ResNet + FPN (p2..p6 with a max-pooled p6) + BFP. Refine level: MODEL.BFP.REFINE_LEVEL."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    backbone = BFPFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        **_bfp_args(cfg),
    )
    return guard_trainer_only_settings(backbone, trainer_only_settings(cfg))


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_bfp_backbone(cfg, input_shape):
    """ResNet + FPN (p3..p7, P6/P7 from res5) + BFP. Libra RetinaNet uses REFINE_LEVEL 1 (p4).
    ``MODEL.LIBRA.P7_RELU: False`` drops the ReLU between P6 and P7 (the reference's FPN)."""
    bfp_args = _bfp_args(cfg)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top = LastLevelP6P7 if cfg.MODEL.LIBRA.P7_RELU else LastLevelP6P7NoReLU
    backbone = BFPFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        **bfp_args,
    )
    return guard_trainer_only_settings(backbone, trainer_only_settings(cfg))
