"""Checks on dataset dicts and annotation files: clear errors, counted warnings.

Policy (what a user sees):

* annotation JSON that is truncated or malformed -> :class:`DatasetError` naming the file and
  the parse position;
* an image file that is missing or unreadable -> :class:`DatasetError` naming the file and
  the image id (raised when the image is loaded);
* boxes with zero or negative width/height -> dropped, one warning per dataset with the
  count and the first annotation/image ids;
* boxes partly outside their image -> clipped to it; boxes entirely outside -> dropped;
  both counted in the same warning;
* non-contiguous category ids, images without annotations and crowd-only images -> handled
  by detectron2 as it documents (id mapping; such images are filtered from training when
  DATALOADER.FILTER_EMPTY_ANNOTATIONS is on, the default; crowd boxes are ignored).
"""
import json
import logging
from typing import Dict, List

from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "check_json_file", "sanitize_boxes"]


class DatasetError(RuntimeError):
    """A dataset file or entry cannot be used; the message names the file / ids."""


def check_json_file(path: str) -> None:
    """Raise :class:`DatasetError` naming ``path`` if it is not parseable JSON or lacks the
    COCO top-level lists."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"annotation file {path} is not valid JSON (truncated or malformed): {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except OSError as e:
        raise DatasetError(f"annotation file {path} cannot be read: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"annotation file {path} is not COCO instances format: needs lists 'images', 'annotations', 'categories'")


def sanitize_boxes(dicts: List[Dict], dataset_name: str = "") -> List[Dict]:
    """Drop degenerate / fully-outside boxes and clip partly-outside ones, in place; warn once
    with counts. Returns ``dicts``."""
    degenerate, clipped, outside = [], [], []
    for d in dicts:
        h, w = d.get("height"), d.get("width")
        keep = []
        for ann in d.get("annotations", []):
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            x0, y0, x1, y1 = box
            ident = (ann.get("id"), d.get("image_id"))
            if not (x1 > x0 and y1 > y0):
                degenerate.append(ident)
                continue
            if h is not None and w is not None:
                cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
                if not (cx1 > cx0 and cy1 > cy0):
                    outside.append(ident)
                    continue
                if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                    clipped.append(ident)
                    ann["bbox"] = [cx0, cy0, cx1, cy1]
                    ann["bbox_mode"] = BoxMode.XYXY_ABS
            keep.append(ann)
        if "annotations" in d:
            d["annotations"] = keep
    for what, items in (
        ("dropped {n} boxes with zero or negative width/height", degenerate),
        ("dropped {n} boxes lying entirely outside their image", outside),
        ("clipped {n} boxes reaching outside their image", clipped),
    ):
        if items:
            ann_id, img_id = items[0]
            logger.warning(
                "%s: " + what.format(n=len(items)) + " (first: annotation id %s in image id %s)",
                dataset_name or "dataset",
                ann_id,
                img_id,
            )
    return dicts
