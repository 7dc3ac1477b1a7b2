"""BFPBackbone: the Balanced Feature Pyramid around any detectron2 pyramid backbone."""
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone, build_model

from libra_d2.config import LibraConfigError
from libra_d2.modeling.backbone import BFPBackbone
from libra_d2.modeling.bfp import BFP

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Levels(Backbone):
    def __init__(self, channels, strides=(8, 16, 32)):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3, c, 1) for c in channels)
        self.strides, self.channels = strides, channels
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return {f"p{i}": conv(x[:, :, ::s, ::s]) * self.scale for i, (conv, s) in enumerate(zip(self.convs, self.strides))}

    def output_shape(self):
        return {f"p{i}": ShapeSpec(channels=c, stride=s) for i, (c, s) in enumerate(zip(self.channels, self.strides))}

    @property
    def size_divisibility(self):
        return 32


def test_the_wrapper_reports_the_inner_backbone_and_adds_only_bfp_parameters():
    inner = _Levels((16, 16, 16))
    plain_keys = set(inner.state_dict())
    wrapped = BFPBackbone(inner, refine_level=1)
    assert wrapped.output_shape() == inner.output_shape() and wrapped.size_divisibility == 32
    assert wrapped.padding_constraints == getattr(inner, "padding_constraints", {})
    assert wrapped.strides is inner.strides and wrapped.inner is inner  # the inner backbone's attributes read through
    assert set(wrapped.state_dict()) - plain_keys == {k for k in wrapped.state_dict() if k.startswith("bfp.")}
    assert plain_keys <= set(wrapped.state_dict())
    x = torch.rand(2, 3, 64, 64)
    out = wrapped(x)
    ref = dict(zip(["p0", "p1", "p2"], wrapped.bfp([inner(x)[k] for k in ("p0", "p1", "p2")])))
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    wrapped.eval()
    assert not inner.training and not inner.convs[0].training
    wrapped.double()  # conversions reach the inner module's own buffers and parameters
    assert inner.scale.dtype == torch.float64 and inner.convs[0].weight.dtype == torch.float64
    assert wrapped(x.double())["p0"].dtype == torch.float64


def test_bad_inner_backbones_are_refused_with_the_levels_named():
    with pytest.raises(ValueError, match=r"one channel count.*p0 \(stride 8, 16 channels\).*p1 \(stride 16, 32 channels\)"):
        BFPBackbone(_Levels((16, 32, 16)))
    with pytest.raises(ValueError, match="at least 2 levels.*p0"):
        BFPBackbone(_Levels((16,), strides=(8,)))
    with pytest.raises(ValueError, match="already holds a Balanced Feature Pyramid"):
        BFPBackbone(BFPBackbone(_Levels((16, 16, 16)), refine_level=0))
    with pytest.raises(LibraConfigError, match=r"refine_level.*0\.\.2.*inner backbone's levels: p0, p1, p2"):
        BFPBackbone(_Levels((16, 16, 16)), refine_level=3)


def test_yacs_builder_wraps_the_named_backbone_and_refuses_unknown_or_double(libra_cfg):
    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "MODEL.BACKBONE.NAME", "build_bfp_backbone")
    torch.manual_seed(0)
    generic = build_backbone(cfg)
    torch.manual_seed(0)
    named = build_backbone(libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml"))  # build_resnet_bfp_backbone
    assert isinstance(generic, BFPBackbone) and isinstance(named, BFPBackbone)
    a, b = generic.state_dict(), named.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same model, same initialisation
    cfg.MODEL.BFP.BASE_BACKBONE = "build_no_such_backbone"
    with pytest.raises(LibraConfigError, match="not a registered backbone builder; registered: .*build_resnet_fpn_backbone"):
        build_backbone(cfg)
    cfg.MODEL.BFP.BASE_BACKBONE = "build_resnet_bfp_backbone"
    with pytest.raises(LibraConfigError, match="already ends in a BFP"):
        build_backbone(cfg)
    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "MODEL.BFP.REFINE_LEVEL", 5)
    with pytest.raises(LibraConfigError, match=r"0\.\.4.*levels: p2, p3, p4, p5, p6"):
        build_backbone(cfg)


def test_retinanet_pyramid_and_plain_fpn_checkpoints_load(libra_cfg, tmp_path):
    """A plain detectron2 model's checkpoint loads into its Libra twin with only bfp.* missing."""
    from detectron2.checkpoint import DetectionCheckpointer

    for plain, libra in (("builtin/faster_rcnn_R_18_FPN_cpu.yaml", "builtin/libra_rcnn_R_18_FPN_cpu.yaml"),
                         ("builtin/retinanet_R_18_FPN_cpu.yaml", "builtin/libra_retinanet_R_18_FPN_cpu.yaml")):
        path = tmp_path / "plain.pth"
        state = build_model(libra_cfg(plain)).state_dict()
        torch.save({"model": state}, path)
        model = build_model(libra_cfg(libra))
        assert isinstance(model.backbone, BFPBackbone) and isinstance(model.backbone.bfp, BFP)
        result = model.load_state_dict(state, strict=False)
        assert not result.unexpected_keys
        assert result.missing_keys and all(k.startswith("backbone.bfp.") for k in result.missing_keys)
        DetectionCheckpointer(model).load(str(path))  # detectron2's loader takes it as well
        w = "backbone.fpn_lateral3.weight"
        assert torch.equal(model.state_dict()[w], state[w])


def _snippet():
    text = open(os.path.join(ROOT, "docs", "semantics.md")).read()
    section = text.split("BFP on your own backbone", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_the_own_backbone_snippet_runs_as_written(tmp_path):
    script = tmp_path / "own_backbone.py"
    script.write_text(_snippet())
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == "{'p3': (1, 32, 8, 12), 'p4': (1, 32, 4, 6)}" and lines[-1] == "['bfp', 'down', 'stem']"
