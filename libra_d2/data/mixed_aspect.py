"""``libra_shapes_mixed``: the built-in dataset with portrait images, for aspect-ratio grouping.

Every third image of each libra_shapes split (index 0, 3, 6, ...) is rotated 90 degrees
clockwise, becoming 256 x 320 (W x H, portrait); the others stay 320 x 256 (landscape). A
box ``[x0, y0, x1, y1]`` of an image of height H becomes ``[H - y1, x0, H - y0, x1]``. Images
are shared with libra_shapes where unrotated (same files) and written once where rotated.
Registered as ``libra_shapes_mixed_train`` / ``libra_shapes_mixed_val`` (COCO files through
detectron2's loader, evaluated with ``COCOEvaluator``); generated on first use under
``<root>/libra_shapes_mixed/``, atomically and under a file lock like libra_shapes.
"""
import json
import os
import shutil

from .atomic import atomic_folder, generate_once
from .shapes import SPLITS, dataset_dir, ensure_generated

__all__ = ["PORTRAIT_EVERY", "mixed_dir", "ensure_mixed"]

PORTRAIT_EVERY = 3
VERSION = 1


def mixed_dir(root=None):
    return os.path.join(os.path.dirname(dataset_dir(root)), "libra_shapes_mixed")


def _marker():
    return {"version": VERSION, "portrait_every": PORTRAIT_EVERY, "splits": {k: v[0] for k, v in SPLITS.items()}}


def _complete(path):
    try:
        with open(os.path.join(path, "COMPLETE")) as f:
            return json.load(f) == _marker()
    except (OSError, ValueError):
        return False


def _write_split(src, dst, split):
    import cv2

    with open(os.path.join(src, "annotations", f"instances_{split}.json")) as f:
        coco = json.load(f)
    os.makedirs(os.path.join(dst, split), exist_ok=True)
    rotated = set()
    for i, im in enumerate(sorted(coco["images"], key=lambda m: m["id"])):
        src_file = os.path.join(src, split, im["file_name"])
        out_file = os.path.join(dst, split, im["file_name"])
        if i % PORTRAIT_EVERY:
            shutil.copyfile(src_file, out_file)
            continue
        img = cv2.imread(src_file, cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"cannot read {src_file}")
        if not cv2.imwrite(out_file, cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {out_file}")
        rotated.add(im["id"])
        im["height"], im["width"] = im["width"], im["height"]
    old_h = {im["id"]: im["width"] for im in coco["images"] if im["id"] in rotated}  # original height
    for a in coco["annotations"]:
        if a["image_id"] in rotated:
            x, y, w, h = a["bbox"]
            a["bbox"] = [old_h[a["image_id"]] - (y + h), x, h, w]
    coco["info"] = {"description": f"libra_shapes_mixed {split}: every {PORTRAIT_EVERY}rd image rotated to portrait"}
    os.makedirs(os.path.join(dst, "annotations"), exist_ok=True)
    with open(os.path.join(dst, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)


def ensure_mixed(root=None):
    """Return the ``libra_shapes_mixed`` folder, generating it (and libra_shapes) if needed."""
    path = mixed_dir(root)
    if _complete(path):
        return path
    src = ensure_generated(root)

    def make():
        with atomic_folder(path, _marker()) as tmp:
            for split in SPLITS:
                _write_split(src, tmp, split)

    return generate_once(path, lambda: _complete(path), make)
