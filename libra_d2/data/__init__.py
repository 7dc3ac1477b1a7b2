"""Built-in dataset registration. Importing this module registers ``libra_shapes_train`` and
``libra_shapes_val`` in detectron2's DatasetCatalog through detectron2's own COCO loader
(``load_coco_json``), so the standard data loader and ``COCOEvaluator`` run on them. The
files are generated on first use under ``$DETECTRON2_DATASETS`` (default ``./datasets``)."""
import os

from .shapes import CLASSES, SPLITS, dataset_dir, ensure_generated

__all__ = ["register_libra_shapes", "ensure_generated", "dataset_dir", "CLASSES"]


def _load(split, root):
    from detectron2.data.datasets.coco import load_coco_json

    path = ensure_generated(root)
    return load_coco_json(os.path.join(path, "annotations", f"instances_{split}.json"), os.path.join(path, split), f"libra_shapes_{split}")


def register_libra_shapes(root=None):
    """Register both splits (idempotent). ``root`` defaults to $DETECTRON2_DATASETS or ./datasets."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    path = dataset_dir(root)
    for split in SPLITS:
        name = f"libra_shapes_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda split=split, root=root: _load(split, root))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(path, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(path, split),
            evaluator_type="coco",
            thing_classes=list(CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASSES))},
        )


register_libra_shapes()
