"""Does a detector find objects but name them wrongly? Class-aware vs class-agnostic AP.

Pure functions on COCO-format data (the ``coco_instances_results.json`` that detectron2's
``COCOEvaluator`` writes, and the dataset's annotation file); ``tools/class_confusion.py``
runs them. pycocotools computes the APs; what it has no notion of is written here:

* :func:`class_agnostic`: every detection relabelled to one class, with class-agnostic NMS
  (detections of different classes on one object become one) and the top-k per image kept,
  so the agnostic AP measures localisation and objectness alone;
* :func:`confusion_matrix`: for each ground-truth object, the class of the highest-scoring
  detection that overlaps it at IoU >= a threshold (or "missed").
"""
import contextlib
import copy
import io
from typing import Dict, List, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou, nms

__all__ = ["class_agnostic", "confusion_matrix", "coco_ap", "diagnose"]


def _xyxy(boxes_xywh) -> torch.Tensor:
    b = torch.as_tensor(boxes_xywh, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def class_agnostic(detections: Sequence[dict], nms_iou: float = 0.5, topk: int = 100) -> List[dict]:
    """COCO detections (``image_id``, ``bbox`` XYWH, ``score``, ``category_id``) as one class
    (``category_id`` 1): per image, NMS at ``nms_iou`` over all classes together, then the
    ``topk`` highest scores."""
    by_image: Dict[int, List[dict]] = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    out = []
    for image_id in sorted(by_image):
        ds = by_image[image_id]
        keep = nms(_xyxy([d["bbox"] for d in ds]).float(), torch.tensor([float(d["score"]) for d in ds]), nms_iou)
        out += [dict(ds[k], category_id=1) for k in keep[:topk].tolist()]
    return out


def confusion_matrix(gt: dict, detections: Sequence[dict], iou: float = 0.5):
    """Rows: ground-truth categories (``gt["categories"]`` order); columns: the same
    categories, then "missed". Each non-crowd ground-truth object counts once, in the column
    of the highest-scoring detection (any class) with IoU >= ``iou``. Returns
    ``(names, matrix [K, K + 1] int)``."""
    cats = [c["id"] for c in gt["categories"]]
    index = {c: i for i, c in enumerate(cats)}
    matrix = np.zeros((len(cats), len(cats) + 1), dtype=np.int64)
    dets: Dict[int, List[dict]] = {}
    for d in detections:
        dets.setdefault(d["image_id"], []).append(d)
    objects: Dict[int, List[dict]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            objects.setdefault(a["image_id"], []).append(a)
    for image_id, anns in objects.items():
        ds = dets.get(image_id, [])
        if not ds:
            for a in anns:
                matrix[index[a["category_id"]], -1] += 1
            continue
        overlap = box_iou(_xyxy([a["bbox"] for a in anns]), _xyxy([d["bbox"] for d in ds]))
        scores = torch.tensor([float(d["score"]) for d in ds], dtype=torch.float64)
        for i, a in enumerate(anns):
            hit = overlap[i] >= iou
            if not hit.any():
                matrix[index[a["category_id"]], -1] += 1
                continue
            best = int(torch.where(hit, scores, torch.full_like(scores, -float("inf"))).argmax())
            matrix[index[a["category_id"]], index[ds[best]["category_id"]]] += 1
    return [c["name"] for c in gt["categories"]], matrix


def coco_ap(gt: dict, detections: Sequence[dict]) -> Dict[str, float]:
    """pycocotools' box AP, AP50 and AR@100 (in percent) of ``detections`` on ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AR@100": 0.0}
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(list(detections))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": 100 * ev.stats[0], "AP50": 100 * ev.stats[1], "AR@100": 100 * ev.stats[8]}


def diagnose(gt: dict, detections: Sequence[dict], iou: float = 0.5, topk: int = 100) -> dict:
    """Class-aware and class-agnostic AP, and the confusion matrix, in one dict."""
    agnostic_gt = copy.deepcopy(gt)
    agnostic_gt["categories"] = [{"id": 1, "name": "object"}]
    for a in agnostic_gt["annotations"]:
        a["category_id"] = 1
    names, matrix = confusion_matrix(gt, detections, iou)
    return {"class_aware": coco_ap(gt, detections),
            "class_agnostic": coco_ap(agnostic_gt, class_agnostic(detections, topk=topk)),
            "confusion": {"classes": names, "columns": names + ["missed"], "matrix": matrix.tolist(), "iou": iou}}
