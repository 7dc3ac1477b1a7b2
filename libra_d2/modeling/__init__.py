"""The Libra R-CNN model: importing this package registers every component.

Pure functions (``sampling``, ``losses``) are apart from the modules that use them:
``roi_samplers`` (the RoI sampler registry), ``roi_heads`` / ``cascade`` / ``fast_rcnn``
(box heads), ``bfp`` / ``refine`` / ``pooling`` (the Balanced Feature Pyramid), ``backbone``
(the BFP wrapper and its builders), ``rpn``, ``retinanet``, ``matcher`` and ``compat``
(detectron2 0.6's RetinaNet GroupNorm head). Nothing here imports the engine or the export
code.
"""
from . import backbone, cascade, retinanet, roi_heads, rpn  # noqa: F401  (registration side effects)
from .retinanet_gn import enable_retinanet_group_norm

enable_retinanet_group_norm()  # MODEL.RETINANET.NORM "GN" on detectron2 0.6 (see compat.py)
