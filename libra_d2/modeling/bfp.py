"""Balanced Feature Pyramid (Libra R-CNN, feature level): the module over a list of levels.
The FPN backbones that apply it are in :mod:`libra_d2.modeling.backbone`."""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..config import validate_refine_args
from .adaptive_pool import adaptive_max_pool2d_gather, onnx_exporting
from .refine import ConvRefine, NonLocal2d

__all__ = ["BFP"]


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
        validate_refine_args("BFP", refine_level, refine_type, num_levels)
        refine_level = int(refine_level)
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
        # is at most 2**levels_apart. Under ONNX export and torch.export the gather form
        # (identical values; torch's op specialises the graph to the traced sizes);
        # everywhere else torch's own op.
        if onnx_exporting() or torch.compiler.is_exporting():
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
