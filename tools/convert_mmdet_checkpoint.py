#!/usr/bin/env python
"""Convert a reference-implementation (mmdetection 2.x/3.x) Libra checkpoint to libra-d2.

    python tools/convert_mmdet_checkpoint.py --input libra_faster_rcnn_r50_fpn_1x_coco.pth \\
        --output output/converted/libra_faster_rcnn_R_50_FPN.pth
    python train_net.py --config-file output/converted/libra_faster_rcnn_R_50_FPN.yaml --eval-only

Handles Libra Faster R-CNN (``backbone.*`` pytorch-style ResNet, ``neck.0.*`` FPN,
``neck.1.*`` BFP, ``rpn_head.*``, ``roi_head.bbox_head.*``) and Libra RetinaNet
(``bbox_head.*``); the architecture is detected from the keys. Every source key is either
converted or listed as unused (the tool fails on unused keys unless ``--allow-unused``), and
every converted tensor's shape is checked against a model built from the written config.

Writes ``OUTPUT`` (a detectron2 checkpoint: ``{"model": ..., "__author__": ...}``) and the
matching config next to it (``.yaml``): torchvision-style ResNet (``STRIDE_IN_1X1: False``),
RGB input with the reference's mean/std, 80 COCO classes (background last, as in both
frameworks), box-coder weights (10, 10, 5, 5) / (1, 1, 1, 1), everything else at
detectron2's defaults. The key mapping table: docs/converter.md.
"""
import argparse
import os
import re
import sys
from collections import OrderedDict

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from libra_d2.utils.convert import resnet_key_to_d2  # noqa: E402
from libra_d2.utils.safe_load import UntrustedCheckpointError, load_checkpoint  # noqa: E402

REF_PIXEL_MEAN = [123.675, 116.28, 103.53]
REF_PIXEL_STD = [58.395, 57.12, 57.375]


def retinanet_anchor_order(num_sizes=3, num_ratios=3):
    """Index map from detectron2's anchor order (size-major: a = s * R + r) to the
    reference's (ratio-major: a = r * S + s)."""
    return [r * num_sizes + s for s in range(num_sizes) for r in range(num_ratios)]


def _reorder_anchor_channels(t, per_anchor, order):
    """Permute the anchor blocks of a conv output (A * per_anchor channels)."""
    a = len(order)
    shape = t.shape
    t = t.reshape(a, per_anchor, *shape[1:])
    return t[order].reshape(shape)


def convert_key(key, arch):
    """mmdetection key -> detectron2 key, or None if it has no counterpart."""
    if key.startswith("backbone."):
        new = resnet_key_to_d2(key[len("backbone."):])
        return None if new is None else "backbone.bottom_up." + new
    offset = 2 if arch == "rcnn" else 3
    m = re.match(r"^neck\.0\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", key)
    if m:
        return f"backbone.fpn_lateral{int(m.group(1)) + offset}.{m.group(2)}"
    m = re.match(r"^neck\.0\.fpn_convs\.(\d+)\.conv\.(weight|bias)$", key)
    if m:
        i = int(m.group(1))
        if arch == "retinanet" and i >= 3:  # extra convs on C5: P6, then P7
            return f"backbone.top_block.{'p6' if i == 3 else 'p7'}.{m.group(2)}"
        return f"backbone.fpn_output{i + offset}.{m.group(2)}"
    m = re.match(r"^neck\.1\.refine\.(theta|phi|g|conv_out|conv)\.conv\.(weight|bias)$", key)
    if m:
        return f"backbone.bfp.refine.{m.group(1)}.{m.group(2)}"
    table = {
        "rpn_head.rpn_conv.": "proposal_generator.rpn_head.conv.",
        "rpn_head.rpn_cls.": "proposal_generator.rpn_head.objectness_logits.",
        "rpn_head.rpn_reg.": "proposal_generator.rpn_head.anchor_deltas.",
        "roi_head.bbox_head.shared_fcs.0.": "roi_heads.box_head.fc1.",
        "roi_head.bbox_head.shared_fcs.1.": "roi_heads.box_head.fc2.",
        "roi_head.bbox_head.fc_cls.": "roi_heads.box_predictor.cls_score.",
        "roi_head.bbox_head.fc_reg.": "roi_heads.box_predictor.bbox_pred.",
        "bbox_head.retina_cls.": "head.cls_score.",
        "bbox_head.retina_reg.": "head.bbox_pred.",
    }
    for src, dst in table.items():
        if key.startswith(src):
            return dst + key[len(src):]
    m = re.match(r"^bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.(weight|bias)$", key)
    if m:
        sub = "cls_subnet" if m.group(1) == "cls" else "bbox_subnet"
        return f"head.{sub}.{2 * int(m.group(2))}.{m.group(3)}"
    return None


def detect(state_dict):
    if any(k.startswith("roi_head.") for k in state_dict):
        return "rcnn"
    if any(k.startswith("bbox_head.retina_cls") for k in state_dict):
        return "retinanet"
    raise SystemExit("convert_mmdet_checkpoint: neither roi_head.* nor bbox_head.retina_cls.* keys: not a Libra R-CNN/RetinaNet checkpoint")


def build_config(arch, state_dict):
    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg()
    if arch == "rcnn":
        cfg.merge_from_file(os.path.join(ROOT, "configs/Base-Libra-RCNN-FPN.yaml"))
        num_classes = state_dict["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    else:
        cfg.merge_from_file(os.path.join(ROOT, "configs/Base-Libra-RetinaNet.yaml"))
        a = len(retinanet_anchor_order())
        num_classes = state_dict["bbox_head.retina_cls.weight"].shape[0] // a
        cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
        # the reference's RetinaNet neck: P7 = conv(P6) without a ReLU; its test path clips
        # each level's boxes to the image before NMS
        cfg.MODEL.LIBRA.P7_RELU = False
        cfg.MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS = True
    depth = 50
    blocks = {int(m.group(1)) for k in state_dict for m in [re.match(r"^backbone\.layer3\.(\d+)\.", k)] if m}
    if blocks and max(blocks) + 1 == 23:
        depth = 101
    cfg.MODEL.RESNETS.DEPTH = depth
    w = state_dict.get("backbone.layer1.0.conv2.weight")
    if w is not None and w.shape[1] != w.shape[0]:  # grouped 3x3: ResNeXt
        groups = w.shape[0] // w.shape[1]
        cfg.MODEL.RESNETS.NUM_GROUPS = groups
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = w.shape[0] // groups
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP = True  # the reference's decoder bounds dw, dh at both ends
    cfg.MODEL.PIXEL_MEAN = list(REF_PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(REF_PIXEL_STD)
    cfg.INPUT.FORMAT = "RGB"
    if "neck.1.refine.conv.conv.weight" in state_dict:
        cfg.MODEL.BFP.REFINE_TYPE = "conv"
    elif not any(k.startswith("neck.1.") for k in state_dict):
        cfg.MODEL.BFP.REFINE_TYPE = "none"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def convert(state_dict, arch=None):
    """Returns (arch, converted OrderedDict, unused source keys)."""
    arch = arch or detect(state_dict)
    out, unused = OrderedDict(), []
    order = retinanet_anchor_order()
    for k, v in state_dict.items():
        new = convert_key(k, arch)
        if new is None:
            unused.append(k)
            continue
        if arch == "retinanet" and k.startswith("bbox_head.retina_"):
            per_anchor = v.shape[0] // len(order)
            v = _reorder_anchor_channels(v, per_anchor, order)
        out[new] = v
    return arch, out, unused


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="mmdetection .pth checkpoint")
    ap.add_argument("--output", required=True, help="detectron2 .pth to write (config: same name, .yaml)")
    ap.add_argument("--allow-unused", action="store_true", help="do not fail on source keys without a counterpart")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="unpickle everything in --input (can run code from the file); by default only "
                    "tensors, plain containers, numbers, strings and numpy data are loaded")
    args = ap.parse_args(argv)

    try:
        ckpt = load_checkpoint(args.input, trust=args.trust_checkpoint)
    except UntrustedCheckpointError as e:
        raise SystemExit(f"convert_mmdet_checkpoint: {e}") from None
    sd = ckpt.get("state_dict", ckpt)
    arch, converted, unused = convert(sd)
    droppable = [k for k in unused if k.endswith("num_batches_tracked")]
    unexpected = [k for k in unused if k not in droppable]
    cfg = build_config(arch, sd)

    from detectron2.modeling import build_model

    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    target = model.state_dict()
    problems = []
    for k, v in converted.items():
        if k not in target:
            problems.append(f"{k}: not in the libra-d2 model")
        elif tuple(target[k].shape) != tuple(v.shape):
            problems.append(f"{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(target[k].shape)} in the model")
    missing = [k for k in target if k not in converted and not k.endswith(("pixel_mean", "pixel_std"))]
    print(f"architecture: {'Libra Faster R-CNN' if arch == 'rcnn' else 'Libra RetinaNet'}; "
          f"{len(converted)} tensors converted, {len(droppable)} num_batches_tracked dropped")
    for k in unexpected:
        print(f"  unused source key: {k}")
    for k in missing:
        print(f"  model key without a source tensor: {k}")
    if problems:
        raise SystemExit("convert_mmdet_checkpoint: shape/key mismatch:\n  " + "\n  ".join(problems))
    if unexpected and not args.allow_unused:
        raise SystemExit(f"convert_mmdet_checkpoint: {len(unexpected)} source keys unused (see above); --allow-unused to proceed")

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "__author__": "libra-d2 convert_mmdet_checkpoint"}, args.output)
    cfg.MODEL.WEIGHTS = os.path.abspath(args.output)
    cfg_path = os.path.splitext(args.output)[0] + ".yaml"
    with open(cfg_path, "w") as f:
        f.write(cfg.dump())
    print(f"wrote {args.output} and {cfg_path}")
    return converted, missing, unexpected


if __name__ == "__main__":
    main()
