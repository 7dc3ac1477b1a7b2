"""Balanced Feature Pyramid (Libra R-CNN, feature level) and the FPN backbones using it."""
from typing import List

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from .config import REFINE_TYPES, LibraConfigError, validate_libra_config
from .engine.trainer_keys import guard_trainer_only_settings, trainer_only_settings

__all__ = [
    "BFP", "NonLocal2d", "ConvRefine", "BFPFPN", "LastLevelP6P7NoReLU", "build_resnet_bfp_backbone",
    "build_retinanet_resnet_bfp_backbone",
]



def _has_sdpa_scale() -> bool:
    import inspect

    fn = getattr(F, "scaled_dot_product_attention", None)
    if fn is None:
        return False
    try:
        return "scale" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: scale exists since torch 2.1
        return True


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block, ``C`` inter channels, no 1/sqrt(C) scaling.

    ``out = x + conv_out(softmax(theta(x)^T phi(x)) g(x))``, attention over all H*W
    positions. ``theta``, ``phi``, ``g``, ``conv_out`` are 1x1 convs with bias; theta/phi/g
    start as N(0, 0.01) and ``conv_out`` at zero, so the block starts as the identity.

    ``use_sdpa=True`` (default) computes the attention with
    ``F.scaled_dot_product_attention(scale=1.0)`` on contiguous [B, 1, HW, C] tensors so
    memory-efficient (flash) kernels are used where the device has them, on CPU too: memory
    stays linear in H*W. ``use_sdpa=False`` materialises the HW x HW matrix (for export or
    old torch). The attention is computed in float32 whatever the input dtype or autocast
    state (unscaled logits overflow float16), then cast back.
    """

    def __init__(self, channels: int, use_sdpa: bool = True):
        super().__init__()
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.conv_out = nn.Conv2d(channels, channels, 1)
        self.use_sdpa = use_sdpa and _has_sdpa_scale()
        for m in (self.theta, self.phi, self.g):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # [B, C, H, W] -> contiguous [B, 1, HW, C] (the layout the fused kernels need)
        q = self.theta(x).flatten(2).transpose(1, 2).contiguous()
        k = self.phi(x).flatten(2).transpose(1, 2).contiguous()
        v = self.g(x).flatten(2).transpose(1, 2).contiguous()
        out_dtype = v.dtype
        # The logits q.k are unscaled sums over C channels: with a trained FPN's activations
        # they can pass float16's largest value (65504). So the attention always runs in
        # float32, also under autocast / on half inputs, and the result is cast back.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            if self.use_sdpa:
                y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)
            else:
                y = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1).bmm(v)
        y = y.to(out_dtype).transpose(1, 2).reshape(b, c, h, w)
        return x + self.conv_out(y)


class ConvRefine(nn.Module):
    """3x3 conv (with bias) + ReLU, the "conv" refinement."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.kaiming_uniform_(self.conv.weight, a=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return F.relu(self.conv(x))


class BFP(nn.Module):
    """Balanced Feature Pyramid: gather, refine, scatter (residual).

    Input/output: a list of L tensors [B, C, H_l, W_l] (finest first); outputs have the
    input shapes. With refine level r:

    1. levels l < r are adaptive-max-pooled to level r's size, levels l >= r
       nearest-resized to it, and the L maps averaged (the balanced semantic feature);
    2. the average is refined: ``"non_local"`` (:class:`NonLocal2d`), ``"conv"``
       (:class:`ConvRefine`) or ``"none"``;
    3. the refined map is nearest-upsampled to levels l < r, adaptive-max-pooled to levels
       l >= r, and added to each input level.
    """

    def __init__(self, channels: int, num_levels: int, refine_level: int = 2, refine_type: str = "non_local"):
        super().__init__()
        if isinstance(refine_level, bool) or not isinstance(refine_level, int) or not 0 <= refine_level < num_levels:
            raise LibraConfigError(
                f"BFP(refine_level=...) [config key MODEL.BFP.REFINE_LEVEL] = {refine_level!r} is invalid: "
                f"allowed 0..{num_levels - 1} (an index into the {num_levels} pyramid levels)"
            )
        if refine_type not in REFINE_TYPES:
            raise LibraConfigError(
                f"BFP(refine_type=...) [config key MODEL.BFP.REFINE_TYPE] = {refine_type!r} is invalid: "
                f"allowed one of {', '.join(repr(t) for t in REFINE_TYPES)}"
            )
        self.channels = channels
        self.num_levels = num_levels
        self.refine_level = refine_level
        self.refine_type = refine_type
        if refine_type == "non_local":
            self.refine = NonLocal2d(channels)
        elif refine_type == "conv":
            self.refine = ConvRefine(channels)
        else:
            self.refine = nn.Identity()

    @staticmethod
    def _max_pool(x, size, levels_apart: int):
        # Adjacent pyramid levels differ by 2x per side (ceil when odd), so the pooling ratio
        # is at most 2**levels_apart. Under ONNX export the gather form (identical values);
        # everywhere else torch's own op.
        if _onnx_exporting():
            return adaptive_max_pool2d_gather(x, size, 2 ** levels_apart)
        return F.adaptive_max_pool2d(x, size)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"BFP expects {self.num_levels} levels, got {len(feats)}")
        r = self.refine_level
        size = feats[r].shape[-2:]
        bsf = None
        for i, f in enumerate(feats):
            if i < r:
                g = self._max_pool(f, size, r - i)
            elif i == r:
                g = f
            else:
                g = F.interpolate(f, size=size, mode="nearest")
            bsf = g if bsf is None else bsf + g
        bsf = self.refine(bsf / self.num_levels)
        outs = []
        for i, f in enumerate(feats):
            if i < r:
                res = F.interpolate(bsf, size=f.shape[-2:], mode="nearest")
            elif i == r:
                res = bsf
            else:
                res = self._max_pool(bsf, f.shape[-2:], i - r)
            outs.append(f + res)
        return outs


def _adaptive_max_1d(x: torch.Tensor, out_len, dim: int, max_window: int) -> torch.Tensor:
    """``adaptive_max_pool`` along ``dim`` written with gathers: output ``i`` is the max of
    input positions ``[floor(i*L/n), ceil((i+1)*L/n))`` (L = input, n = output length), as in
    ``F.adaptive_max_pool2d``. Each window is read through ``max_window`` clamped indices, so
    it must hold at most that many positions (true when L <= (max_window - 1) * n)."""
    in_len = x.shape[dim]
    i = torch.arange(out_len, device=x.device)
    start = torch.div(i * in_len, out_len, rounding_mode="floor")
    end = torch.div((i + 1) * in_len + out_len - 1, out_len, rounding_mode="floor")
    out = None
    for k in range(max_window):
        idx = torch.minimum(start + k, end - 1)
        v = x.index_select(dim, idx)
        out = v if out is None else torch.maximum(out, v)
    return out


def adaptive_max_pool2d_gather(x: torch.Tensor, size, max_ratio: int) -> torch.Tensor:
    """Same values as ``F.adaptive_max_pool2d(x, size)`` for outputs at most ``max_ratio``
    times smaller than the input per side, from ops the ONNX exporter accepts with dynamic
    sizes (its adaptive pooling needs a constant output size). Separable: rows, then columns."""
    x = _adaptive_max_1d(x, size[0], x.dim() - 2, max_ratio + 1)
    return _adaptive_max_1d(x, size[1], x.dim() - 1, max_ratio + 1)


def _onnx_exporting() -> bool:
    fn = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(fn()) if fn is not None else False


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


def _bfp_args(cfg, num_levels, names):
    validate_libra_config(cfg)
    r = cfg.MODEL.BFP.REFINE_LEVEL
    if not 0 <= r < num_levels:
        raise LibraConfigError(
            f"MODEL.BFP.REFINE_LEVEL = {r} is invalid: allowed 0..{num_levels - 1} "
            f"(an index into the pyramid levels {', '.join(names)})"
        )
    return dict(refine_level=r, refine_type=cfg.MODEL.BFP.REFINE_TYPE)


def _num_levels(cfg, extra):
    return len(cfg.MODEL.FPN.IN_FEATURES) + extra


@BACKBONE_REGISTRY.register()
def build_resnet_bfp_backbone(cfg, input_shape):
    """ResNet + FPN (p2..p6 with a max-pooled p6) + BFP. Refine level: MODEL.BFP.REFINE_LEVEL."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    names = [f"p{int(f[-1])}" for f in cfg.MODEL.FPN.IN_FEATURES] + ["(max-pool level)"]
    backbone = BFPFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        **_bfp_args(cfg, _num_levels(cfg, 1), names),
    )
    return guard_trainer_only_settings(backbone, trainer_only_settings(cfg))


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_bfp_backbone(cfg, input_shape):
    """ResNet + FPN (p3..p7, P6/P7 from res5) + BFP. Libra RetinaNet uses REFINE_LEVEL 1 (p4).
    ``MODEL.LIBRA.P7_RELU: False`` drops the ReLU between P6 and P7 (the reference's FPN)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top = LastLevelP6P7 if cfg.MODEL.LIBRA.P7_RELU else LastLevelP6P7NoReLU
    names = [f"p{int(f[-1])}" for f in cfg.MODEL.FPN.IN_FEATURES] + ["(P6)", "(P7)"]
    backbone = BFPFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        **_bfp_args(cfg, _num_levels(cfg, 2), names),
    )
    return guard_trainer_only_settings(backbone, trainer_only_settings(cfg))
