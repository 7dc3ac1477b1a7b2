"""The Balanced Feature Pyramid around any detectron2 pyramid backbone, and its builders in
detectron2's BACKBONE_REGISTRY:

* ``build_bfp_backbone``: the backbone that ``MODEL.BFP.BASE_BACKBONE`` names (any registered
  builder: ``build_resnet_fpn_backbone``, ``build_retinanet_resnet_fpn_backbone``, your own),
  wrapped in :class:`BFPBackbone`;
* ``build_resnet_bfp_backbone`` (ResNet-FPN p2..p6, Faster/Mask/Cascade R-CNN) and
  ``build_retinanet_resnet_bfp_backbone`` (ResNet-FPN p3..p7, RetinaNet): the same wrapper
  around detectron2's ResNet-FPN (with the reference's P6/P7 when ``MODEL.LIBRA.P7_RELU`` is
  False).
"""
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..config import LibraConfigError, require_libra_config
from .bfp import BFP

__all__ = ["BFPBackbone", "LastLevelP6P7NoReLU", "build_bfp_backbone", "build_resnet_bfp_backbone",
           "build_retinanet_resnet_bfp_backbone"]


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """RetinaNet's extra levels as the reference builds them: P6 = conv(C5), P7 = conv(P6),
    with no ReLU in between (detectron2's :class:`LastLevelP6P7` applies one). Same
    parameters and state-dict names (``p6``, ``p7``)."""

    def forward(self, c5):
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


class BFPBackbone(Backbone):
    """A detectron2 ``Backbone`` whose outputs form a pyramid of one channel count (FPN,
    ViTDet's ``SimpleFeaturePyramid``, RegNet-FPN, your own), followed by a :class:`BFP` over
    all of its outputs, finest (smallest stride) first.

    Output names, strides and channels, ``size_divisibility`` and ``padding_constraints`` are
    the inner backbone's. So are its parameter names: the inner backbone's submodules and
    parameters are this module's own (the inner module is held, not nested), and only
    ``bfp.*`` is new, so a checkpoint of the plain backbone (detectron2's model zoo, your own)
    loads into the wrapped model with only ``bfp.*`` missing.

    Refused at construction: a backbone with a single output, outputs of differing channel
    counts (the message names each level and its channels), one that already holds a BFP,
    and ``refine_level`` outside its levels.
    """

    def __init__(self, backbone: Backbone, refine_level: int = 2, refine_type: str = "non_local"):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"BFPBackbone wraps a detectron2 Backbone, got {type(backbone).__name__}")
        if any(isinstance(m, (BFP, BFPBackbone)) for m in backbone.modules()):
            raise ValueError(f"BFPBackbone: the inner backbone ({type(backbone).__name__}) already holds a Balanced "
                             "Feature Pyramid; a second one is not applied")
        shapes = backbone.output_shape()
        names = sorted(shapes, key=lambda k: shapes[k].stride)
        levels = ", ".join(f"{k} (stride {shapes[k].stride}, {shapes[k].channels} channels)" for k in names)
        if len(names) < 2:
            raise ValueError(f"BFPBackbone needs a pyramid of at least 2 levels; {type(backbone).__name__} "
                             f"outputs {levels or 'nothing'}")
        if len({shapes[k].channels for k in names}) != 1:
            raise ValueError(f"BFPBackbone needs levels of one channel count (the BFP averages them); "
                             f"{type(backbone).__name__} outputs {levels}")
        self.__dict__["_inner"] = backbone  # held, not registered: see the class docstring
        for name, child in backbone._modules.items():
            self.add_module(name, child)
        for name, param in backbone._parameters.items():
            if param is not None:
                self.register_parameter(name, param)
        for name, buf in backbone._buffers.items():
            if buf is not None:
                self.register_buffer(name, buf, persistent=name not in backbone._non_persistent_buffers_set)
        self._out_features = names
        self._out_feature_strides = {k: shapes[k].stride for k in names}
        self._out_feature_channels = {k: shapes[k].channels for k in names}
        try:
            self.bfp = BFP(shapes[names[0]].channels, len(names), refine_level, refine_type)
        except LibraConfigError as e:
            raise LibraConfigError(f"{e} (the inner backbone's levels: {', '.join(names)})") from None

    def __getattr__(self, name):
        # the inner backbone's own attributes (an FPN's ``in_features``, ``lateral_convs``,
        # ``top_block``, ...) read through the wrapper as through the plain backbone
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_inner")
            if inner is None or "bfp" not in self.__dict__.get("_modules", {}):  # not while being built
                raise
            return getattr(inner, name)

    @property
    def inner(self) -> Backbone:
        """The wrapped backbone (its modules are this module's own)."""
        return self._inner

    @property
    def size_divisibility(self) -> int:
        return self._inner.size_divisibility

    @property
    def padding_constraints(self):
        return getattr(self._inner, "padding_constraints", {})

    def train(self, mode: bool = True):
        super().train(mode)
        self._inner.training = mode  # its children are shared; its own flag is set here
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # parameters / buffers owned by the inner module itself follow the converted ones
        for store in ("_parameters", "_buffers"):
            inner = getattr(self._inner, store)
            for name in inner:
                if inner[name] is not None:
                    inner[name] = getattr(self, store)[name]
        return self

    def forward(self, x):
        feats = self._inner(x)
        outs = self.bfp([feats[k] for k in self._out_features])
        return dict(zip(self._out_features, outs))


def _bfp_args(cfg):
    """The BFP's arguments from ``MODEL.BFP`` (the BFP constructor checks them)."""
    require_libra_config(cfg)
    return dict(refine_level=cfg.MODEL.BFP.REFINE_LEVEL, refine_type=cfg.MODEL.BFP.REFINE_TYPE)


@BACKBONE_REGISTRY.register()
def build_bfp_backbone(cfg, input_shape):
    """The backbone that ``MODEL.BFP.BASE_BACKBONE`` names (a registered builder), wrapped in
    :class:`BFPBackbone` with ``MODEL.BFP.REFINE_LEVEL`` / ``REFINE_TYPE``."""
    args = _bfp_args(cfg)
    name = cfg.MODEL.BFP.BASE_BACKBONE
    registered = sorted(k for k, _ in BACKBONE_REGISTRY)
    if name not in registered:
        raise LibraConfigError(f"MODEL.BFP.BASE_BACKBONE = {name!r} is not a registered backbone builder; "
                               f"registered: {', '.join(registered)}")
    if name in ("build_bfp_backbone", "build_resnet_bfp_backbone", "build_retinanet_resnet_bfp_backbone"):
        raise LibraConfigError(f"MODEL.BFP.BASE_BACKBONE = {name!r} already ends in a BFP; name the plain "
                               "pyramid's builder (e.g. build_resnet_fpn_backbone)")
    return BFPBackbone(BACKBONE_REGISTRY.get(name)(cfg, input_shape), **args)


@BACKBONE_REGISTRY.register()
def build_resnet_bfp_backbone(cfg, input_shape):
    """ResNet + FPN (p2..p6 with a max-pooled p6, detectron2's ``build_resnet_fpn_backbone``)
    + BFP. Refine level: MODEL.BFP.REFINE_LEVEL."""
    args = _bfp_args(cfg)
    fpn = FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    return BFPBackbone(fpn, **args)


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_bfp_backbone(cfg, input_shape):
    """ResNet + FPN (p3..p7, P6/P7 from res5) + BFP. Libra RetinaNet uses REFINE_LEVEL 1 (p4).
    ``MODEL.LIBRA.P7_RELU: False`` drops the ReLU between P6 and P7 (the reference's FPN)."""
    args = _bfp_args(cfg)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top = LastLevelP6P7 if cfg.MODEL.LIBRA.P7_RELU else LastLevelP6P7NoReLU
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    return BFPBackbone(fpn, **args)
