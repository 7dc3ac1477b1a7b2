"""tools/: demo, sampling plot, reference checkpoint converter, torchvision backbone converter."""
import os
import re

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_reference_name(k, arch):
    """detectron2 key -> the reference implementation's key (the table in docs/converter.md)."""
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
    # metadata as the reference's checkpoints carry it (strings, tuples, numbers, numpy data)
    meta = {"CLASSES": tuple(["c"] * 80), "mmdet_version": "3.3.0", "epoch": 12,
            "seed": np.int64(7), "hist": np.arange(3.0)}
    torch.save({"state_dict": sd, "meta": meta}, tmp_path / "ref.pth")
    converted, missing, unexpected = convert(["--input", str(tmp_path / "ref.pth"), "--output", str(tmp_path / "out.pth")])
    assert unexpected == [] and missing == []
    assert len(converted) + sum(k.endswith("num_batches_tracked") for k in sd) == len(sd)  # every key consumed

    from detectron2.checkpoint import DetectionCheckpointer

    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg(str(tmp_path / "out.yaml"))
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP is True  # the reference's decoder
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
    from tools.plot_sampling import main as plot
    from tools.predict import main as demo

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


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_converter_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    from tools.convert_mmdet_checkpoint import main as convert

    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "meta": _RunsCode(marker)},
               tmp_path / "evil.pth")
    with pytest.raises(SystemExit) as e:
        convert(["--input", str(tmp_path / "evil.pth"), "--output", str(tmp_path / "out.pth")])
    msg = str(e.value)
    assert "posix.system" in msg or "os.system" in msg, msg  # names what it carried
    assert "--trust-checkpoint" in msg
    assert not marker.exists() and not (tmp_path / "out.pth").exists()

    # the explicit opt-in unpickles everything (here: runs the command), as documented
    from libra_d2.utils.safe_load import load_checkpoint

    load_checkpoint(str(tmp_path / "evil.pth"), trust=True)
    assert marker.exists()


def test_converted_retinanet_follows_the_reference_neck_and_nms_order(libra_cfg, tmp_path):
    """The reference's semantics written out here from their definitions (no ReLU between P6
    and P7; per level: score threshold, top-k, decode, clip to the image; then class-wise
    NMS and the top 100), compared with the converted libra-d2 RetinaNet."""
    import torch.nn.functional as F
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling.backbone.fpn import FPN
    from torchvision.ops import batched_nms

    from libra_d2.config import get_libra_cfg
    from tools.convert_mmdet_checkpoint import main as convert

    torch.manual_seed(0)
    src = build_model(libra_cfg("COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", "",
                                "MODEL.RESNETS.STRIDE_IN_1X1", False))
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.02)
    sd = reference_state_dict(src, "retinanet")
    torch.save({"state_dict": sd}, tmp_path / "ref.pth")
    convert(["--input", str(tmp_path / "ref.pth"), "--output", str(tmp_path / "out.pth")])
    cfg = get_libra_cfg(str(tmp_path / "out.yaml"))
    assert cfg.MODEL.LIBRA.P7_RELU is False and cfg.MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS is True
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()

    h, w = 160, 224
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)) * 255
    x = ((image[[2, 1, 0]] if cfg.INPUT.FORMAT == "BGR" else image) - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        c5 = model.backbone.bottom_up(x[None])["res5"]
        p6 = F.conv2d(c5, sd["neck.0.fpn_convs.3.conv.weight"], sd["neck.0.fpn_convs.3.conv.bias"], stride=2, padding=1)
        p7 = F.conv2d(p6, sd["neck.0.fpn_convs.4.conv.weight"], sd["neck.0.fpn_convs.4.conv.bias"], stride=2, padding=1)
        fpn = FPN.forward(model.backbone, x[None])  # the FPN part of the neck, before BFP
        torch.testing.assert_close(fpn["p6"], p6, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fpn["p7"], p7, rtol=1e-5, atol=1e-6)
        with_relu = F.conv2d(F.relu(p6), sd["neck.0.fpn_convs.4.conv.weight"], sd["neck.0.fpn_convs.4.conv.bias"],
                             stride=2, padding=1)
        assert (with_relu - p7).abs().max() > 1e-3  # the ReLU would have mattered here

        # detections in the reference's order
        feats = model.backbone(x[None])
        levels = [feats[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        logits, deltas = model.head(levels)
        anchors = model.anchor_generator(levels)
        k = cfg.MODEL.RETINANET.NUM_CLASSES
        boxes_all, scores_all, classes_all = [], [], []
        for lg, dl, anc in zip(logits, deltas, anchors):
            scores = lg[0].permute(1, 2, 0).reshape(-1, k).sigmoid().flatten()  # (H, W, A, K) order
            dl = dl[0].permute(1, 2, 0).reshape(-1, 4)
            keep = scores > cfg.MODEL.RETINANET.SCORE_THRESH_TEST
            idx = keep.nonzero().flatten()
            top = scores[idx].topk(min(cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST, idx.numel()))
            idx = idx[top.indices]
            a, c = idx // k, idx % k
            b = model.box2box_transform.apply_deltas(dl[a], anc.tensor[a])
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # the reference's min_bbox_size=0
            boxes_all.append(b[valid])
            scores_all.append(top.values[valid])
            classes_all.append(c[valid])
        boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
        keep = batched_nms(boxes, scores, classes, cfg.MODEL.RETINANET.NMS_THRESH_TEST)[:100]
        got = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    assert len(got) == len(keep) == 100
    torch.testing.assert_close(got.pred_boxes.tensor, boxes[keep], rtol=0, atol=1e-3)
    torch.testing.assert_close(got.scores, scores[keep], rtol=0, atol=1e-6)
    assert torch.equal(got.pred_classes, classes[keep])
