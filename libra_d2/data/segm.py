"""Instance masks for the built-in dataset: ``libra_shapes_segm_{train,val,val_mini}``.

The same images and boxes as libra_shapes, with each object's *visible* region as a COCO
RLE ``segmentation`` (re-rendered from the generator, which is deterministic per image, so
masks and boxes agree pixel for pixel: the box is the tight box of the mask and ``area`` its
pixel count). Written once per dataset folder to ``annotations/instances_{split}_segm.json``
(atomically, under the dataset's lock), next to the box-only files, which stay unchanged.
Train Mask R-CNN on it with ``INPUT.MASK_FORMAT: bitmask`` (RLE masks are bitmasks).
"""
import json
import os
import tempfile

import numpy as np

from .atomic import generate_once
from .shapes import SPLITS, ensure_generated, render_image

__all__ = ["segm_json", "ensure_segm"]


def segm_json(path, split):
    return os.path.join(path, "annotations", f"instances_{split}_segm.json")


def _write(path, split, seed):
    from pycocotools import mask as mask_util

    with open(os.path.join(path, "annotations", f"instances_{split}.json")) as f:
        coco = json.load(f)
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    split_id = SPLITS[split][1]
    for im in coco["images"]:
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        _, objects = render_image(seed, split_id, im["id"] - 1)
        if len(objects) != len(anns):
            raise RuntimeError(f"libra_shapes {split} image {im['id']}: {len(objects)} rendered objects for "
                               f"{len(anns)} annotations; regenerate the dataset")
        for a, (cls, vis) in zip(anns, objects):
            ys, xs = np.nonzero(vis)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min())]
            if box != a["bbox"] or cls + 1 != a["category_id"]:
                raise RuntimeError(f"libra_shapes {split} annotation {a['id']}: rendered mask does not match its box")
            rle = mask_util.encode(np.asfortranarray(vis.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            a["segmentation"] = rle
    out = segm_json(path, split)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".segm_tmp_")
    with os.fdopen(fd, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, out)


def ensure_segm(root=None, seed=0):
    """Return the libra_shapes folder, with the mask annotation files written if missing."""
    path = ensure_generated(root, seed)

    def make():
        for split in SPLITS:
            if not os.path.isfile(segm_json(path, split)):
                _write(path, split, seed)

    return generate_once(path, lambda: all(os.path.isfile(segm_json(path, s)) for s in SPLITS), make)
