"""Run a trained model on image files and write the visualised predictions (PNG)."""
import os
from typing import Iterable, List

import cv2


def build_predictor(cfg):
    """detectron2's DefaultPredictor for ``cfg`` (MODEL.WEIGHTS must point at the weights)."""
    from detectron2.engine import DefaultPredictor

    return DefaultPredictor(cfg)


def visualize_files(cfg, predictor, paths: Iterable[str], output_dir: str, threshold: float = 0.5, progress=True) -> List[str]:
    """Predict on each image file and write ``<output_dir>/<stem>.png``; returns the paths written.

    Detections with score below ``threshold`` are not drawn. Unreadable files raise an
    error naming the file.
    """
    from detectron2.data import MetadataCatalog
    from detectron2.utils.visualizer import ColorMode, Visualizer

    os.makedirs(output_dir, exist_ok=True)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
    paths = list(paths)
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, desc="predict", unit="img")
    written = []
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"could not read image {path!r} (missing or not an image)")
        # the predictor converts BGR to the model's INPUT.FORMAT itself
        inst = predictor(img)["instances"].to("cpu")
        inst = inst[inst.scores >= threshold]
        vis = Visualizer(img[:, :, ::-1], meta, scale=1.5, instance_mode=ColorMode.IMAGE)
        out = vis.draw_instance_predictions(inst).get_image()[:, :, ::-1]
        dest = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(dest, out)
        written.append(dest)
    return written
