"""tools/: demo, sampling plot, reference checkpoint converter, torchvision backbone converter."""
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("tool", ["demo.py", "plot_sampling.py", "convert_mmdet_checkpoint.py", "convert_torchvision_backbone.py"])
def test_help(tool):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage" in out.stdout.lower()


def to_reference_name(k, arch):
    """detectron2 key -> the reference implementation's key (DESIGN.md section 9 table)."""
    rules = [
        (r"^backbone\.bottom_up\.stem\.conv1\.norm\.(.+)$", lambda m: f"backbone.bn1.{m[1]}"),
        (r"^backbone\.bottom_up\.stem\.conv1\.(.+)$", lambda m: f"backbone.conv1.{m[1]}"),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(.+)$", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.(.+)$", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.{m[4]}"),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(.+)$", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
        (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.(.+)$", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.0.{m[3]}"),
        (r"^backbone\.fpn_lateral(\d)\.(.+)$", lambda m: f"neck.0.lateral_convs.{int(m[1]) - (2 if arch == 'rcnn' else 3)}.conv.{m[2]}"),
        (r"^backbone\.fpn_output(\d)\.(.+)$", lambda m: f"neck.0.fpn_convs.{int(m[1]) - (2 if arch == 'rcnn' else 3)}.conv.{m[2]}"),
        (r"^backbone\.top_block\.p6\.(.+)$", lambda m: f"neck.0.fpn_convs.3.conv.{m[1]}"),
        (r"^backbone\.top_block\.p7\.(.+)$", lambda m: f"neck.0.fpn_convs.4.conv.{m[1]}"),
        (r"^backbone\.bfp\.refine\.(\w+)\.(.+)$", lambda m: f"neck.1.refine.{m[1]}.conv.{m[2]}"),
        (r"^proposal_generator\.rpn_head\.conv\.(.+)$", lambda m: f"rpn_head.rpn_conv.{m[1]}"),
        (r"^proposal_generator\.rpn_head\.objectness_logits\.(.+)$", lambda m: f"rpn_head.rpn_cls.{m[1]}"),
        (r"^proposal_generator\.rpn_head\.anchor_deltas\.(.+)$", lambda m: f"rpn_head.rpn_reg.{m[1]}"),
        (r"^roi_heads\.box_head\.fc(\d)\.(.+)$", lambda m: f"roi_head.bbox_head.shared_fcs.{int(m[1]) - 1}.{m[2]}"),
        (r"^roi_heads\.box_predictor\.cls_score\.(.+)$", lambda m: f"roi_head.bbox_head.fc_cls.{m[1]}"),
        (r"^roi_heads\.box_predictor\.bbox_pred\.(.+)$", lambda m: f"roi_head.bbox_head.fc_reg.{m[1]}"),
        (r"^head\.cls_subnet\.(\d+)\.(.+)$", lambda m: f"bbox_head.cls_convs.{int(m[1]) // 2}.conv.{m[2]}"),
        (r"^head\.bbox_subnet\.(\d+)\.(.+)$", lambda m: f"bbox_head.reg_convs.{int(m[1]) // 2}.conv.{m[2]}"),
        (r"^head\.cls_score\.(.+)$", lambda m: f"bbox_head.retina_cls.{m[1]}"),
        (r"^head\.bbox_pred\.(.+)$", lambda m: f"bbox_head.retina_reg.{m[1]}"),
    ]
    for pat, fn in rules:
        m = re.match(pat, k)
        if m:
            return fn(m)
    return None


def reference_state_dict(model, arch):
    sd = {}
    for k, v in model.state_dict().items():
        name = to_reference_name(k, arch)
        if name is None:
            continue
        if arch == "retinanet" and name.startswith("bbox_head.retina_"):
            # reference anchor order is ratio-major (r * 3 + s); detectron2's is size-major
            a = 9
            blocks = v.reshape(a, v.shape[0] // a, *v.shape[1:])
            inverse = [s * 3 + r for r in range(3) for s in range(3)]
            v = blocks[inverse].reshape(v.shape)
        sd[name] = v.clone()
        if name.endswith(".running_var"):
            sd[name.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return sd


@pytest.mark.parametrize("arch,config", [("rcnn", "COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml"),
                                         ("retinanet", "COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml")])
def test_convert_reference_checkpoint(libra_cfg, tmp_path, arch, config):
    from tools.convert_mmdet_checkpoint import main as convert

    torch.manual_seed(0)
    src_model = build_model(libra_cfg(config, "MODEL.WEIGHTS", "", "MODEL.RESNETS.STRIDE_IN_1X1", False))
    for p in src_model.parameters():  # make every tensor distinguishable
        torch.nn.init.normal_(p, std=0.02)
    sd = reference_state_dict(src_model, arch)
    torch.save({"state_dict": sd, "meta": {"CLASSES": ["c"] * 80}}, tmp_path / "ref.pth")
    converted, missing, unexpected = convert(["--input", str(tmp_path / "ref.pth"), "--output", str(tmp_path / "out.pth")])
    assert unexpected == [] and missing == []
    assert len(converted) + sum(k.endswith("num_batches_tracked") for k in sd) == len(sd)  # every key consumed

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg

    import libra_d2

    cfg = get_cfg()
    libra_d2.add_libra_config(cfg)
    cfg.merge_from_file(str(tmp_path / "out.yaml"))
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    ref = src_model.state_dict()
    for k, v in model.state_dict().items():
        if k.endswith(("pixel_mean", "pixel_std")):
            continue
        assert torch.equal(v, ref[k]), k
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 128, 160) * 255}])
    assert "instances" in out[0]


@pytest.mark.slow
def test_demo_and_plot_on_builtin(shapes_root, tmp_path, libra_cfg):
    from detectron2.checkpoint import DetectionCheckpointer

    from libra_d2.data import dataset_dir
    from tools.demo import main as demo
    from tools.plot_sampling import main as plot

    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml")
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("w")
    weights = str(tmp_path / "w.pth")
    imgs = os.path.join(dataset_dir(shapes_root), "val", "00000[0-2].jpg")
    written = demo(["--config-file", os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"), "--input", imgs,
                    "--output", str(tmp_path / "vis"), "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", weights])
    assert len(written) == 3 and all(os.path.getsize(p) > 1000 for p in written)
    table = plot(["--config-file", os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"), "--num-images", "4",
                  "--output", str(tmp_path / "plot.png"), "--opts", "MODEL.WEIGHTS", weights, "DATASETS.TRAIN", "('libra_shapes_val_mini',)"])
    assert os.path.getsize(tmp_path / "plot.png") > 5000
    for row in ("all", "uniform", "iou_balanced"):
        assert abs(sum(table[row]["shares"]) - 1.0) < 1e-6 or table[row]["count"] == 0
