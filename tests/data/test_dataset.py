import json
import os

import numpy as np

from libra_d2.data import shapes


def test_render_is_deterministic():
    a_img, a_obj = shapes.render_image(0, 1, 5)
    b_img, b_obj = shapes.render_image(0, 1, 5)
    c_img, _ = shapes.render_image(1, 1, 5)
    assert np.array_equal(a_img, b_img) and not np.array_equal(a_img, c_img)
    assert [c for c, _ in a_obj] == [c for c, _ in b_obj]


def load(root, split):
    with open(os.path.join(shapes.dataset_dir(root), "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


def test_valid_coco_json_with_size_mix_and_empty_images(shapes_root):
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        path = os.path.join(shapes.dataset_dir(shapes_root), "annotations", f"instances_{split}.json")
        coco = COCO(path)  # pycocotools parses and indexes it
        d = load(shapes_root, split)
        assert len(d["images"]) == shapes.SPLITS[split][0]
        assert [c["id"] for c in d["categories"]] == [1, 2, 3, 4]
        sizes = {im["id"]: (im["width"], im["height"]) for im in d["images"]}
        areas = []
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = sizes[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert 0 < a["area"] <= w * h
            areas.append(a["area"])
        areas = np.array(areas)
        assert (areas < 32**2).sum() > 0.1 * len(areas)  # COCO small
        assert ((areas >= 32**2) & (areas < 96**2)).sum() > 0.1 * len(areas)  # medium
        assert (areas >= 96**2).sum() > 0.02 * len(areas)  # large
        per_image = np.bincount([a["image_id"] for a in d["annotations"]], minlength=len(d["images"]) + 1)[1:]
        assert (per_image == 0).sum() >= 1, "no empty images"
        assert per_image.max() >= 5, "no crowded images"
        assert len(coco.getImgIds()) == len(d["images"])
        for im in d["images"][:3]:
            assert os.path.isfile(os.path.join(shapes.dataset_dir(shapes_root), split, im["file_name"]))


def test_overlaps_present(shapes_root):
    d = load(shapes_root, "train")
    by_img = {}
    for a in d["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a["bbox"])
    overlapping = 0
    for boxes in by_img.values():
        b = np.array(boxes, dtype=float)
        x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
        iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
        ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
        inter = iw * ih
        np.fill_diagonal(inter, 0)
        overlapping += int((inter > 0).any())
    assert overlapping > 0.2 * len(by_img)


def test_incomplete_dataset_is_regenerated(tmp_path):
    path = shapes.dataset_dir(str(tmp_path))
    os.makedirs(os.path.join(path, "train"))
    with open(os.path.join(path, "train", "000000.jpg"), "w") as f:
        f.write("half-written")
    assert not shapes.is_complete(path)
    old = shapes.SPLITS
    shapes.SPLITS = {"train": (3, 0), "val": (2, 1)}
    try:
        shapes.ensure_generated(str(tmp_path), progress=False)
        assert shapes.is_complete(path)
        assert len(os.listdir(os.path.join(path, "train"))) == 3
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".libra_shapes_tmp_")]
    finally:
        shapes.SPLITS = old


def test_registered_through_detectron2(shapes_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get("libra_shapes_val")
    assert len(dicts) == shapes.SPLITS["val"][0]
    assert MetadataCatalog.get("libra_shapes_val").thing_classes == shapes.CLASSES
    assert len(DatasetCatalog.get("libra_shapes_val_mini")) == 24
    assert all(0 <= a["category_id"] < 4 for d in dicts for a in d["annotations"])


def test_generate_once_runs_the_generator_once_across_concurrent_callers(tmp_path):
    import threading
    import time

    from libra_d2.data.atomic import generate_once

    path = str(tmp_path / "set")
    calls = []

    def generate():
        calls.append(1)
        time.sleep(0.5)  # the second caller arrives while this one holds the lock
        os.makedirs(path)

    threads = [threading.Thread(target=generate_once, args=(path, lambda: os.path.isdir(path), generate))
               for _ in range(2)]
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and os.path.isdir(path)
    assert generate_once(path, lambda: True, generate) == path and len(calls) == 1
