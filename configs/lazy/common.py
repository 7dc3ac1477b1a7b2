"""Helpers of the LazyConfig files in this folder (imported as ``from .common import ...``)."""
import importlib.util
import os

from detectron2.config import LazyConfig


def d2_config(relpath: str):
    """detectron2's packaged LazyConfig ``relpath`` (e.g. ``"common/models/mask_rcnn_fpn.py"``),
    as ``detectron2.model_zoo.get_config`` returns it, without importing
    ``detectron2.model_zoo`` (on detectron2 main it imports ``pkg_resources``, which current
    setuptools no longer ships)."""
    root = importlib.util.find_spec("detectron2").submodule_search_locations[0]
    path = os.path.join(root, "model_zoo", "configs", relpath)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{relpath} is not among this detectron2's packaged configs ({os.path.dirname(path)})")
    return LazyConfig.load(path)
