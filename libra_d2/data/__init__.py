"""Built-in dataset registration. Importing this module registers ``libra_shapes_train``,
``libra_shapes_val`` and ``libra_shapes_val_mini`` (first 24 val images), and
``libra_shapes_mixed_{train,val}`` (every third image rotated to portrait, for aspect-ratio
grouping: :mod:`libra_d2.data.mixed_aspect`) and ``libra_shapes_segm_{train,val,val_mini}`` (with
instance masks: :mod:`libra_d2.data.segm`) in detectron2's DatasetCatalog through detectron2's own COCO loader
(``load_coco_json``), so the standard data loader and ``COCOEvaluator`` run on them. The
files are generated on first use under ``$DETECTRON2_DATASETS`` (default ``./datasets``)."""
import os

from .mixed_aspect import ensure_mixed, mixed_dir
from .segm import ensure_segm, segm_json
from .shapes import CLASSES, SPLITS, dataset_dir, ensure_generated

__all__ = ["register_libra_shapes", "ensure_generated", "ensure_mixed", "dataset_dir", "CLASSES"]


MINI_VAL_IMAGES = 24


def _load(split, root, limit=None, name=None, mixed=False, segm=False):
    from detectron2.data.datasets.coco import load_coco_json

    path = ensure_mixed(root) if mixed else ensure_segm(root) if segm else ensure_generated(root)
    json_file = segm_json(path, split) if segm else os.path.join(path, "annotations", f"instances_{split}.json")
    dicts = load_coco_json(json_file, os.path.join(path, split), name or f"libra_shapes_{split}")
    return dicts[:limit] if limit else dicts


def register_libra_shapes(root=None):
    """Register both splits (idempotent). ``root`` defaults to $DETECTRON2_DATASETS or ./datasets."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    entries = [(f"libra_shapes_{s}", s, None, False, False) for s in SPLITS]
    # the first MINI_VAL_IMAGES val images, for quick checks only: the full val json is its
    # ground truth and COCOEvaluator scores every image of that json, so the objects of the
    # images it did not see count as missed (its AP is not comparable with the full set's)
    entries.append(("libra_shapes_val_mini", "val", MINI_VAL_IMAGES, False, False))
    entries += [(f"libra_shapes_mixed_{s}", s, None, True, False) for s in SPLITS]
    entries += [(f"libra_shapes_segm_{s}", s, None, False, True) for s in SPLITS]
    entries.append(("libra_shapes_segm_val_mini", "val", MINI_VAL_IMAGES, False, True))
    for name, split, limit, mixed, segm in entries:
        path = mixed_dir(root) if mixed else dataset_dir(root)
        json_file = segm_json(path, split) if segm else os.path.join(path, "annotations", f"instances_{split}.json")
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name,
            lambda split=split, root=root, limit=limit, name=name, mixed=mixed, segm=segm: _load(
                split, root, limit, name, mixed, segm),
        )
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=os.path.join(path, split),
            evaluator_type="coco",
            thing_classes=list(CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASSES))},
        )


register_libra_shapes()
