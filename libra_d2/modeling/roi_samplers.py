"""RoI samplers by name: the registry ``LibraSamplingMixin`` (``LibraROIHeads``,
``LibraCascadeROIHeads``) takes its positive and negative samplers from.

A sampler is a function ``sampler(ctx, candidates, num) -> bool[N]`` registered in
``ROI_SAMPLER_REGISTRY`` under its name (the value of ``MODEL.LIBRA.POS_SAMPLER`` /
``NEG_SAMPLER``, or the ``pos_sampler`` / ``neg_sampler`` argument). For one image of N
proposals, ``candidates`` (bool[N]) are the positives or the negatives to choose from and
``num`` how many to take (an int, or a 0-d tensor on accelerators); the result marks the
chosen ones, at most ``num``, all of them candidates. ``ctx`` is a :class:`SamplingContext`.
The head takes the positives first (``num`` = ``BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION``),
then the negatives (``num`` = the batch size minus the positives taken): detectron2's counts.

Two optional attributes of a sampler function: ``roles`` (a subset of ``("positive",
"negative")``, default both) and ``needs_losses`` (True: the head scores every proposal of
the image with its box classifier under ``no_grad`` first and passes the per-proposal
classification losses as ``ctx.losses``).

Built-ins: ``random`` (detectron2's uniform draw; both "random" is detectron2's own
``subsample_labels``), ``instance_balanced`` (positives), ``iou_balanced`` (negatives) and
``ohem`` (highest classification loss first; both roles).
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch
from detectron2.utils.registry import Registry

from .sampling import (
    instance_balanced_positives_mask,
    iou_balanced_negatives_select,
    random_subset_mask,
    sample_instance_balanced_positives,
    sample_iou_balanced_negatives,
    top_loss_mask,
)

__all__ = ["ROI_SAMPLER_REGISTRY", "SamplingContext", "registered_samplers", "get_roi_sampler", "sampler_needs_losses"]

ROI_SAMPLER_REGISTRY = Registry("ROI_SAMPLER")
ROI_SAMPLER_REGISTRY.__doc__ = """RoI samplers by name: ``fn(ctx, candidates, num) -> bool mask`` (see libra_d2.modeling.roi_samplers)."""

ROLES = ("positive", "negative")


@dataclass
class SamplingContext:
    """What a sampler may use about one image's N proposals (after matching).

    matched_idxs: int64[N], index of each proposal's matched ground-truth box (0 without gt).
    gt_classes: int64[N], class of the matched box; ``num_classes`` = background, -1 = ignored.
    max_iou: float[N], each proposal's largest IoU with any ground-truth box.
    num_classes: the number of foreground classes.
    batch_size: ``BATCH_SIZE_PER_IMAGE`` (the most a sample may hold).
    losses: float[N] per-proposal classification loss (only for samplers with ``needs_losses``).
    generator: torch generator to draw from (None: the global one).
    on_cpu: True for the compact numpy paths (CPU tensors), False for the sync-free torch paths.
    num_bins, floor_thresh, floor_fraction, bin_upper: the IoU-balanced sampler's settings
    (``bin_upper`` None: the image's largest IoU, else the background threshold).
    """

    matched_idxs: torch.Tensor
    gt_classes: torch.Tensor
    max_iou: torch.Tensor
    num_classes: int
    batch_size: int
    losses: Optional[torch.Tensor] = None
    generator: Optional[torch.Generator] = None
    on_cpu: bool = True
    num_bins: int = 3
    floor_thresh: float = -1.0
    floor_fraction: float = 0.0
    bin_upper: Optional[float] = None


def registered_samplers(role: str):
    """Sorted names of the registered samplers usable as ``role`` ("positive" / "negative")."""
    return tuple(sorted(name for name, fn in ROI_SAMPLER_REGISTRY if role in getattr(fn, "roles", ROLES)))


def get_roi_sampler(name: str, role: str):
    """The sampler registered as ``name``; KeyError listing the names usable as ``role``."""
    if name not in registered_samplers(role):
        raise KeyError(f"no {role} RoI sampler named {name!r}; registered: {', '.join(registered_samplers(role))}")
    return ROI_SAMPLER_REGISTRY.get(name)


def sampler_needs_losses(fn) -> bool:
    return bool(getattr(fn, "needs_losses", False))


def _mask_from_index(n, index, like):
    mask = torch.zeros(n, dtype=torch.bool, device=like.device)
    mask[index] = True
    return mask


@ROI_SAMPLER_REGISTRY.register()
def random(ctx: SamplingContext, candidates: torch.Tensor, num: Union[int, torch.Tensor]) -> torch.Tensor:
    """A uniformly random subset (detectron2's sampling)."""
    return random_subset_mask(candidates, num, ctx.generator)


@ROI_SAMPLER_REGISTRY.register()
def instance_balanced(ctx: SamplingContext, candidates: torch.Tensor, num: Union[int, torch.Tensor]) -> torch.Tensor:
    """An equal quota per matched ground-truth box (docs/semantics.md)."""
    if ctx.on_cpu:
        index = sample_instance_balanced_positives(ctx.matched_idxs, candidates, num, generator=ctx.generator,
                                                   method="numpy")
        return _mask_from_index(candidates.numel(), index, candidates)
    return instance_balanced_positives_mask(ctx.matched_idxs, candidates, num, generator=ctx.generator)


instance_balanced.roles = ("positive",)


@ROI_SAMPLER_REGISTRY.register()
def iou_balanced(ctx: SamplingContext, candidates: torch.Tensor, num: Union[int, torch.Tensor]) -> torch.Tensor:
    """An equal quota per IoU bin (docs/semantics.md)."""
    kw = dict(num_bins=ctx.num_bins, floor_thresh=ctx.floor_thresh, floor_fraction=ctx.floor_fraction,
              upper=ctx.bin_upper, generator=ctx.generator)
    if ctx.on_cpu:
        index = sample_iou_balanced_negatives(ctx.max_iou, candidates, num, method="numpy", **kw)
        return _mask_from_index(candidates.numel(), index, candidates)
    index, keep = iou_balanced_negatives_select(ctx.max_iou, candidates, num, max_num=ctx.batch_size, **kw)
    # duplicate entries of index carry keep=False
    marked = torch.zeros(candidates.numel(), dtype=torch.int32, device=candidates.device)
    return marked.index_put_((index,), keep.to(torch.int32), accumulate=True) > 0


iou_balanced.roles = ("negative",)


@ROI_SAMPLER_REGISTRY.register()
def ohem(ctx: SamplingContext, candidates: torch.Tensor, num: Union[int, torch.Tensor]) -> torch.Tensor:
    """Online hard example mining (Shrivastava et al., CVPR 2016): the candidates with the
    highest classification loss under the current box head, ties to the lower index."""
    if ctx.losses is None:
        raise ValueError("the 'ohem' sampler needs ctx.losses (the head computes them when needs_losses is set)")
    return top_loss_mask(ctx.losses, candidates, num)


ohem.needs_losses = True
