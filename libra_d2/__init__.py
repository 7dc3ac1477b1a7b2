"""libra-d2: Libra R-CNN for Detectron2.

Importing this package registers every component in Detectron2's registries:
``LibraROIHeads`` and ``LibraCascadeROIHeads`` (ROI_HEADS_REGISTRY), ``build_resnet_bfp_backbone`` and
``build_retinanet_resnet_bfp_backbone`` (BACKBONE_REGISTRY), ``LibraRPN``
(PROPOSAL_GENERATOR_REGISTRY) and ``LibraRetinaNet`` (META_ARCH_REGISTRY); on detectron2
0.6 it also lets ``MODEL.RETINANET.NORM: "GN"`` build (``compat.py``).
"""
__version__ = "0.1.0"

from . import backbone, cascade, data, retinanet, roi_heads, rpn  # noqa: F401  (registration side effects)
from .compat import enable_retinanet_group_norm
from .config import add_libra_config, validate_libra_config  # noqa: F401

enable_retinanet_group_norm()  # MODEL.RETINANET.NORM "GN" on detectron2 0.6 (see compat.py)
