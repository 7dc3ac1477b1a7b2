"""The installed environment: detectron2 (full or the 0.6 Python-only build) and libra_d2."""
import pytest


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


def test_components_registered():
    from detectron2.modeling import (
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        ROI_HEADS_REGISTRY,
    )

    import libra_d2  # noqa: F401
    from libra_d2.modeling.backbone import (
        build_bfp_backbone,
        build_resnet_bfp_backbone,
        build_retinanet_resnet_bfp_backbone,
    )
    from libra_d2.modeling.cascade import LibraCascadeROIHeads
    from libra_d2.modeling.retinanet import LibraRetinaNet
    from libra_d2.modeling.roi_heads import LibraROIHeads
    from libra_d2.modeling.rpn import LibraRPN

    # every registered name resolves to libra-d2's own object (not a detectron2 one of that name)
    expected = [
        (ROI_HEADS_REGISTRY, "LibraROIHeads", LibraROIHeads),
        (ROI_HEADS_REGISTRY, "LibraCascadeROIHeads", LibraCascadeROIHeads),
        (BACKBONE_REGISTRY, "build_bfp_backbone", build_bfp_backbone),
        (BACKBONE_REGISTRY, "build_resnet_bfp_backbone", build_resnet_bfp_backbone),
        (BACKBONE_REGISTRY, "build_retinanet_resnet_bfp_backbone", build_retinanet_resnet_bfp_backbone),
        (PROPOSAL_GENERATOR_REGISTRY, "LibraRPN", LibraRPN),
        (META_ARCH_REGISTRY, "LibraRetinaNet", LibraRetinaNet),
    ]
    for registry, name, obj in expected:
        assert registry.get(name) is obj, name
    # and nothing else named Libra* is registered without being listed here
    listed = {name for _, name, _ in expected}
    for registry in (ROI_HEADS_REGISTRY, BACKBONE_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, META_ARCH_REGISTRY):
        names = {n for n, _ in registry} if hasattr(registry, "__iter__") else set(registry._obj_map)
        assert {n for n in names if "libra" in n.lower() or "bfp" in n.lower()} <= listed
