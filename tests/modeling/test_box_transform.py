"""MODEL.LIBRA.REFERENCE_DECODER_CLAMP: the reference's decoding clamp, and the parts that follow it."""
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform

from libra_d2.modeling.box_transform import ReferenceClampBox2BoxTransform

CLAMP = math.log(1000.0 / 16)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_in_range_deltas_decode_as_detectron2_and_shrinkage_is_bounded(weights):
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 74.0, 52.0], [0.0, 0.0, 16.0, 16.0]])
    deltas = torch.randn(2, 8, generator=g)  # two classes' deltas per box, all well inside the bound
    ours, d2 = ReferenceClampBox2BoxTransform(weights), Box2BoxTransform(weights)
    assert torch.equal(ours.apply_deltas(deltas, boxes), d2.apply_deltas(deltas, boxes))
    # a prediction that shrinks the box below 1/62.5: bounded here, not in detectron2
    shrink = torch.zeros(2, 4)
    shrink[:, 2] = -7.0 * weights[2]
    shrink[:, 3] = -9.0 * weights[3]
    out = ours.apply_deltas(shrink, boxes)
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    assert torch.allclose(w, (boxes[:, 2] - boxes[:, 0]) * math.exp(-CLAMP), rtol=1e-5)
    assert torch.allclose(h, (boxes[:, 3] - boxes[:, 1]) * math.exp(-CLAMP), rtol=1e-5)
    d2_out = d2.apply_deltas(shrink, boxes)
    assert bool(((d2_out[:, 2] - d2_out[:, 0]) < w * 0.1).all())
    # centres are untouched; growth is bounded as in detectron2
    assert torch.allclose(out[:, :2] + out[:, 2:], d2_out[:, :2] + d2_out[:, 2:])
    grow = torch.tensor([[0.0, 0.0, 9.0 * weights[2], 9.0 * weights[3]]]).repeat(2, 1)
    assert torch.equal(ours.apply_deltas(grow, boxes), d2.apply_deltas(grow, boxes))


@pytest.mark.parametrize("config", ["builtin/libra_rcnn_R_18_FPN_cpu.yaml",
                                    "builtin/libra_cascade_rcnn_R_18_FPN_cpu.yaml",
                                    "builtin/libra_retinanet_R_18_FPN_cpu.yaml"])
@pytest.mark.parametrize("clamp", [False, True])
def test_every_decoder_of_the_model_follows_the_key(libra_cfg, config, clamp):
    cfg = libra_cfg(config)
    cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP = clamp
    model = build_model(cfg)
    transforms = [m.box2box_transform for m in model.modules() if hasattr(m, "box2box_transform")]
    expected = {"retinanet": 1, "cascade": 4}.get(next((k for k in ("retinanet", "cascade") if k in config), ""), 2)
    assert len(transforms) == expected
    assert all(isinstance(t, ReferenceClampBox2BoxTransform) == clamp for t in transforms)
    assert all(type(t) is Box2BoxTransform for t in transforms) != clamp
