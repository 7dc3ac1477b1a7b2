"""libra-d2: Libra R-CNN for Detectron2.

Importing this package registers every component in Detectron2's registries
(:mod:`libra_d2.modeling`): ``LibraROIHeads`` and ``LibraCascadeROIHeads``
(ROI_HEADS_REGISTRY), ``build_bfp_backbone``, ``build_resnet_bfp_backbone`` and
``build_retinanet_resnet_bfp_backbone`` (BACKBONE_REGISTRY), ``LibraRPN``
(PROPOSAL_GENERATOR_REGISTRY) and ``LibraRetinaNet`` (META_ARCH_REGISTRY), and the built-in
datasets (:mod:`libra_d2.data`); on detectron2 0.6 it also lets ``MODEL.RETINANET.NORM: "GN"``
build. The trainer (``libra_d2.engine.LibraTrainer``) and the export code
(``libra_d2.export``) are imported on demand.
"""
__version__ = "0.1.0"

from . import data, modeling  # noqa: F401  (registration side effects)
from .config import LibraConfigError, add_libra_config, validate_libra_config  # noqa: F401

__all__ = ["add_libra_config", "validate_libra_config", "LibraConfigError", "modeling", "data"]
