"""The built-in dataset: "libra_shapes", a generated COCO-format detection dataset.

Deterministic for a seed: every image is drawn from its own RNG seeded by
(seed, split, index), so the files do not depend on generation order. Each image
(320 x 256) has a textured background (low-frequency colour field, grain, unlabelled
clutter lines and blobs) and 0-8 objects of four classes (circle, rectangle, triangle,
cross) whose sizes span COCO's small (< 32^2 px), medium and large (> 96^2 px) ranges.
Objects overlap and occlude each other; a placement is rejected when it would hide more
than half of an earlier object. Boxes are the tight box of each object's *visible* pixels,
``area`` its visible pixel count. About 8% of images have no object.

Layout under ``<root>/libra_shapes/``: ``train/*.jpg``, ``val/*.jpg``,
``annotations/instances_{train,val}.json`` and ``COMPLETE`` (written last, holding the
generator version and sizes). Generation writes into a temporary folder that is renamed
into place, under a file lock, so a crash never leaves a half-written dataset that looks
complete; a missing or stale ``COMPLETE`` triggers regeneration.
"""
import json
import logging
import os

import numpy as np

from .atomic import atomic_folder, generate_once

__all__ = ["CLASSES", "SPLITS", "dataset_dir", "ensure_generated", "generate", "render_image"]

logger = logging.getLogger(__name__)

VERSION = 1
CLASSES = ["circle", "rectangle", "triangle", "cross"]
SPLITS = {"train": (600, 0), "val": (120, 1)}  # name -> (number of images, split id)
IMAGE_SIZE = (256, 320)  # H, W
SIZE_RANGES = [(10, 28, 0.4), (34, 90, 0.4), (100, 180, 0.2)]  # (min side, max side, prob)
MAX_OBJECTS = 8
EMPTY_PROB = 0.08


def dataset_dir(root=None):
    root = root or os.environ.get("DETECTRON2_DATASETS", "datasets")
    return os.path.join(os.path.abspath(root), "libra_shapes")


def _background(rng, h, w):
    base = rng.uniform(40, 215, size=3)
    low = rng.normal(0, 35, size=(4, 5, 3)).astype(np.float32)
    import cv2

    field = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    img = base[None, None, :] + field + rng.normal(0, 10, size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 12)):  # clutter: lines and blobs, not annotated
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.6:
            p1 = tuple(int(v) for v in (rng.integers(0, w), rng.integers(0, h)))
            p2 = tuple(int(v) for v in (rng.integers(0, w), rng.integers(0, h)))
            cv2.line(img, p1, p2, color, int(rng.integers(1, 4)))
        else:
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, 7)), int(rng.integers(2, 7)))
            cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return img


def _shape_mask(rng, cls, h, w):
    """uint8 mask of one object of class ``cls`` at a random place and size."""
    import cv2

    lo, hi, _ = SIZE_RANGES[rng.choice(len(SIZE_RANGES), p=[p for _, _, p in SIZE_RANGES])]
    sw = rng.uniform(lo, hi)
    sh = sw * rng.uniform(0.7, 1.4)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    mask = np.zeros((h, w), np.uint8)
    name = CLASSES[cls]
    if name == "circle":
        cv2.ellipse(mask, (int(cx), int(cy)), (max(int(sw / 2), 2), max(int(sh / 2), 2)), 0, 0, 360, 1, -1)
    elif name == "rectangle":
        angle = rng.uniform(0, 90) if rng.random() < 0.3 else 0.0
        pts = cv2.boxPoints(((cx, cy), (sw, sh), angle))
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    elif name == "triangle":
        a = rng.uniform(0, 2 * np.pi)
        pts = [(cx + sw / 2 * np.cos(a + k * 2 * np.pi / 3), cy + sh / 2 * np.sin(a + k * 2 * np.pi / 3)) for k in range(3)]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
    else:  # cross
        t = max(sw / 4, 2)
        cv2.rectangle(mask, (int(cx - sw / 2), int(cy - t / 2)), (int(cx + sw / 2), int(cy + t / 2)), 1, -1)
        cv2.rectangle(mask, (int(cx - t / 2), int(cy - sh / 2)), (int(cx + t / 2), int(cy + sh / 2)), 1, -1)
    return mask


def render_image(seed, split_id, index):
    """Return (image HxWx3 uint8 BGR, list of (class, visible mask)) for one image."""
    rng = np.random.default_rng([seed, split_id, index])
    h, w = IMAGE_SIZE
    img = _background(rng, h, w)
    n = 0 if rng.random() < EMPTY_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
    label = np.full((h, w), -1, np.int16)
    full_area, classes = [], []
    for k in range(n):
        for _ in range(20):
            cls = int(rng.integers(len(CLASSES)))
            mask = _shape_mask(rng, cls, h, w).astype(bool)
            if mask.sum() < 40:
                continue
            trial = label.copy()
            trial[mask] = k
            if all((trial == j).sum() >= 0.5 * full_area[j] for j in range(k)):
                label = trial
                full_area.append(int(mask.sum()))
                classes.append(cls)
                color = rng.integers(0, 256, size=3).astype(np.float32)
                shade = rng.normal(0, 12, size=(h, w, 1)).astype(np.float32)
                img[mask] = np.clip(color[None] + shade[mask], 0, 255).astype(np.uint8)
                break
        else:
            full_area.append(0)
            classes.append(-1)
    objects = [(c, label == k) for k, c in enumerate(classes) if c >= 0]
    return img, objects


def _write_split(out_dir, split, seed, progress=True):
    import cv2
    from tqdm import tqdm

    count, split_id = SPLITS[split]
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    h, w = IMAGE_SIZE
    it = range(count)
    if progress:
        it = tqdm(it, desc=f"libra_shapes {split}", unit="img")
    for i in it:
        img, objects = render_image(seed, split_id, i)
        file_name = f"{i:06d}.jpg"
        if not cv2.imwrite(os.path.join(out_dir, split, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {os.path.join(out_dir, split, file_name)}")
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for cls, vis in objects:
            ys, xs = np.nonzero(vis)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(vis.sum()),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"libra_shapes {split} (generated, seed {seed}, version {VERSION})"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)


def _marker(seed):
    return {"version": VERSION, "seed": seed, "splits": {k: v[0] for k, v in SPLITS.items()}}


def is_complete(path, seed=0):
    try:
        with open(os.path.join(path, "COMPLETE")) as f:
            return json.load(f) == _marker(seed)
    except (OSError, ValueError):
        return False


def generate(path, seed=0, progress=True):
    """Generate the dataset into ``path`` (replacing it), atomically."""
    with atomic_folder(path, _marker(seed)) as tmp:
        for split in SPLITS:
            _write_split(tmp, split, seed, progress)
    return path


def ensure_generated(root=None, seed=0, progress=True):
    """Return the dataset folder, generating it first if it is missing or incomplete."""
    path = dataset_dir(root)

    def make():
        logger.info("Generating the built-in dataset libra_shapes in %s ...", path)
        print(f"[libra_shapes] generating the built-in dataset in {path}", flush=True)
        generate(path, seed, progress)

    return generate_once(path, lambda: is_complete(path, seed), make)
