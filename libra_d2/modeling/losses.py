"""Balanced L1 loss (Libra R-CNN, objective level) as a pure function."""
import math

import torch

__all__ = ["balanced_l1_loss", "dense_balanced_l1_loss"]


def balanced_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Balanced L1 loss on ``x = |input - target|``, elementwise, with ``b = e^(gamma/alpha) - 1``:

    * ``x < beta``:  ``alpha / b * (b * x + 1) * ln(b * x / beta + 1) - alpha * x``
    * otherwise:     ``gamma * x + gamma / b - alpha * beta``

    The two pieces meet at ``x = beta`` for every beta; with beta = 1 the gradient
    ``alpha * ln(b * x + 1)`` below beta also meets ``gamma`` above it. Inliers (small x) get
    a larger gradient than with smooth L1, outliers a gradient capped at gamma.

    Computed in float32 (or float64 for float64 inputs) even under autocast.

    Args:
        input, target: tensors of the same shape.
        alpha, gamma, beta: positive parameters (paper defaults 0.5, 1.5, 1.0).
        reduction: "none" | "sum" | "mean" (mean of an empty input is 0).
    """
    if not (alpha > 0 and gamma > 0 and beta > 0):
        raise ValueError(f"balanced_l1_loss needs alpha, gamma, beta > 0; got {alpha}, {gamma}, {beta}")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    if input.shape != target.shape:
        raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} differ in shape")
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = (input.to(dtype) - target.to(dtype)).abs()
    b = math.exp(gamma / alpha) - 1.0
    inlier = alpha / b * (b * x + 1.0) * torch.log1p(b * x / beta) - alpha * x
    outlier = gamma * x + (gamma / b - alpha * beta)
    loss = torch.where(x < beta, inlier, outlier)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    return loss


def dense_balanced_l1_loss(anchors, box2box_transform, pred_anchor_deltas, gt_boxes, fg_mask, alpha, gamma, beta):
    """Balanced L1 on the anchor deltas of a dense head (RPN, RetinaNet), summed over the
    foreground anchors: the Balanced L1 counterpart of detectron2's dense box-regression loss.

    ``anchors``: list over levels of ``Boxes``; ``pred_anchor_deltas``: list over levels of
    ``(N, Hi*Wi*A, 4)``; ``gt_boxes``: list over images of ``(R, 4)`` matched boxes;
    ``fg_mask``: ``(N, R)`` bool. Returns a scalar (sum, not normalised)."""
    anchors = type(anchors[0]).cat(anchors).tensor
    gt_deltas = torch.stack([box2box_transform.get_deltas(anchors, g) for g in gt_boxes])
    pred = torch.cat(pred_anchor_deltas, dim=1)
    return balanced_l1_loss(pred[fg_mask], gt_deltas[fg_mask], alpha=alpha, gamma=gamma, beta=beta, reduction="sum")
