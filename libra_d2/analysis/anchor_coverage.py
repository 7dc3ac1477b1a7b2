"""How well does an anchor set cover a dataset's boxes under a matcher's thresholds?

For a dense detector each ground-truth box is trained through the anchors the matcher labels
positive. :func:`anchor_coverage` measures, per box at the size the model sees it (the test
resize), the best IoU any anchor reaches, how many anchors reach the foreground threshold, and
whether the box only gets a positive through the matcher's low-quality rule (its best anchor,
below the threshold). detectron2 computes the anchors (``DefaultAnchorGenerator``) and the
IoUs (``pairwise_iou``); the per-box summary by COCO size range is what it has no notion of.
"""
import math
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["SIZE_RANGES", "anchor_coverage", "summarize_coverage"]

# COCO's size ranges, by box area in the original image (px^2), half-open [lo, hi)
SIZE_RANGES = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, math.inf)}


def _test_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """The scale of detectron2's ResizeShortestEdge at test time."""
    scale = min_size / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return scale


def anchor_coverage(anchor_generator, strides: Sequence[int], images: Sequence[dict], fg_iou: float,
                    min_size: int, max_size: int) -> List[dict]:
    """One record per box of ``images`` (detectron2 dataset dicts with XYWH_ABS or XYXY_ABS
    ``annotations``; crowd boxes skipped): ``area`` (original px^2), ``best_iou`` (over all
    anchors of the resized image), ``n_fg`` (anchors with IoU >= ``fg_iou``) and ``low_quality``
    (True when ``n_fg`` is 0, so only the matcher's low-quality rule makes it a positive).
    ``anchor_generator(features)`` must take feature maps of the given ``strides`` in order."""
    from detectron2.structures import BoxMode

    if not 0.0 < fg_iou <= 1.0:
        raise ValueError(f"fg_iou must be in (0, 1], got {fg_iou}")
    out = []
    for d in images:
        anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        h, w = int(d["height"]), int(d["width"])
        s = _test_scale(h, w, min_size, max_size)
        hs, ws = int(round(h * s)), int(round(w * s))
        feats = [torch.zeros(1, 1, math.ceil(hs / st), math.ceil(ws / st)) for st in strides]
        anchors = Boxes.cat(anchor_generator(feats))
        xyxy = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        gt = torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).tolist()
        iou = pairwise_iou(Boxes(gt * s), anchors)  # G x A
        best = iou.max(dim=1).values
        n_fg = (iou >= fg_iou).sum(dim=1)
        for k in range(len(anns)):
            out.append({"area": area[k], "best_iou": float(best[k]), "n_fg": int(n_fg[k]),
                        "low_quality": bool(n_fg[k] == 0), "category_id": anns[k].get("category_id")})
    return out


def summarize_coverage(records: Sequence[dict]) -> Dict[str, dict]:
    """Per COCO size range and ``all``: ``boxes``, median ``best_iou``, ``low_quality_frac``
    (share of boxes with no anchor at the foreground threshold) and median ``n_fg``."""
    groups = {name: [r for r in records if lo <= r["area"] < hi] for name, (lo, hi) in SIZE_RANGES.items()}
    groups["all"] = list(records)
    summary = {}
    for name, rs in groups.items():
        if not rs:
            summary[name] = {"boxes": 0}
            continue
        summary[name] = {
            "boxes": len(rs),
            "best_iou_median": float(np.median([r["best_iou"] for r in rs])),
            "low_quality_frac": float(np.mean([r["low_quality"] for r in rs])),
            "n_fg_median": float(np.median([r["n_fg"] for r in rs])),
        }
    return summary
