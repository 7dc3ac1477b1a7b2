"""The installed environment: detectron2 (full or the 0.6 Python-only build) and libra_d2."""
import importlib

import pytest


def test_detectron2_and_evaluation_import():
    import detectron2
    from detectron2.evaluation import COCOEvaluator  # noqa: F401  (imports detectron2._C)

    assert detectron2.__version__


def test_placeholder_cpp_ops_raise_clear_error():
    from libra_d2.utils.env import detectron2_has_cpp_ops

    if detectron2_has_cpp_ops():
        pytest.skip("detectron2 has a compiled C++ extension here; the placeholder is not in use")
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(NotImplementedError, match="rotated box IoU"):
        pairwise_iou_rotated(torch.rand(3, 5), torch.rand(2, 5))
    from detectron2 import _C

    with pytest.raises(NotImplementedError, match="deformable convolution"):
        _C.deform_conv_forward()


def test_libra_d2_exposes_public_api():
    import libra_d2

    assert callable(libra_d2.add_libra_config)
    for mod, name in [
        ("libra_d2.losses", "balanced_l1_loss"),
        ("libra_d2.sampling", "sample_iou_balanced_negatives"),
        ("libra_d2.sampling", "sample_instance_balanced_positives"),
        ("libra_d2.bfp", "BFP"),
    ]:
        assert callable(getattr(importlib.import_module(mod), name))


def test_components_registered():
    from detectron2.modeling import (
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        ROI_HEADS_REGISTRY,
    )

    import libra_d2  # noqa: F401

    assert ROI_HEADS_REGISTRY.get("LibraROIHeads")
    assert BACKBONE_REGISTRY.get("build_resnet_bfp_backbone")
    assert BACKBONE_REGISTRY.get("build_retinanet_resnet_bfp_backbone")
    assert PROPOSAL_GENERATOR_REGISTRY.get("LibraRPN")
    assert META_ARCH_REGISTRY.get("LibraRetinaNet")
