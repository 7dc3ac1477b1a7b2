"""Evaluation's arguments and the results file, for both config systems."""
import json
import logging
import os

from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..utils.env import detectron2_has_cpp_ops

__all__ = ["coco_evaluator", "coco_evaluator_kwargs", "write_results"]

logger = logging.getLogger("libra_d2")


def coco_evaluator_kwargs() -> dict:
    """Arguments libra-d2 gives ``COCOEvaluator``: the C++ fast evaluation only where this
    detectron2 has its extension (the results are the same; pycocotools otherwise)."""
    return {"use_fast_impl": detectron2_has_cpp_ops()}


def coco_evaluator(dataset_name, output_dir):
    from detectron2.evaluation import COCOEvaluator

    return COCOEvaluator(dataset_name, output_dir=output_dir, **coco_evaluator_kwargs())


def write_results(output_dir, results):
    """``OUTPUT_DIR/eval_results.json`` (the evaluator's results dict), through ``PathManager``;
    main process only, nothing for empty results. Returns the path or None."""
    if not comm.is_main_process() or not results:
        return None
    path = os.path.join(output_dir, "eval_results.json")
    with PathManager.open(path, "w") as f:
        json.dump(results, f, indent=2)
    logger.info("Evaluation results written to %s", path)
    return path
