#!/usr/bin/env python
"""Compare a converted reference checkpoint in libra-d2 with the reference itself (mmdetection).

    python dev/reference/compare_with_mmdet.py --mmdet-python MMDET_PYTHON \\
        --mmdet-config MMDET_CONFIGS/libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py \\
        --checkpoint libra_faster_rcnn_r50_fpn_1x_coco.pth --train-losses -o output/compare.json

(``MMDET_PYTHON``, ``MMDET_CONFIGS``: placeholders for your mmdetection interpreter and its
configs folder, ``<mmdet package>/.mim/configs``.) The checkpoint is converted in memory with
tools/convert_mmdet_checkpoint.py's rules (and loaded the same way: no code from the file
runs unless ``--trust-checkpoint``). The reference runs in its own interpreter
(dev/reference/mmdet_reference_side.py, a subprocess), libra-d2 here, on the same image (yours with
``--image``, else a generated 320x416 one), neither side resizing it. Reported:

* neck outputs, level by level: max |difference| / max |reference|;
* detections: each reference detection matched one-to-one with a libra-d2 detection of the
  same class at IoU > ``--iou`` and |score difference| < ``--score-tol``;
* ``--train-losses`` (two-stage models): every loss term on the given ground-truth boxes
  (``--gt x1,y1,x2,y2,class``, repeatable; default: the generated image's objects) in two
  settings, each side's random draws replaced by one shared priority order:
  ``all_sampled`` (RPN negative cap off, the RPN's batch set to exactly its non-ignored
  anchors, every RoI candidate sampled) and ``rpn_cap`` (the reference's RPN sampler: 256,
  positive fraction 0.5, at most 5 negatives per positive; every RoI candidate sampled),
  with the sampled anchor counts, and whether the anchor-matching differences between the
  two frameworks (see docs) fire on these boxes.

Writes the report as json (``-o``) and prints a summary; exits 1 when a check fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from dev.reference.mmdet_reference_side import choose_by_priority  # noqa: E402

LOSS_NAMES = {"loss_rpn_cls": "loss_rpn_cls", "loss_rpn_loc": "loss_rpn_bbox", "loss_cls": "loss_cls",
              "loss_box_reg": "loss_bbox"}
ROI_ALL = 10 ** 6  # a RoI batch larger than any candidate set: every candidate is sampled


def synthetic_image(h=320, w=416, seed=0):
    """(RGB uint8 image, gt boxes [[x1, y1, x2, y2]], classes): a few filled shapes on noise."""
    import cv2

    rng = np.random.RandomState(seed)
    img = (rng.rand(h, w, 3) * 60 + 90).astype(np.uint8)
    boxes = [[40, 50, 150, 170], [200, 40, 330, 120], [230, 170, 380, 300], [60, 210, 130, 290]]
    classes = [0, 2, 5, 16]
    colors = [(220, 40, 40), (40, 200, 60), (30, 60, 210), (230, 210, 40)]
    cv2.rectangle(img, tuple(boxes[0][:2]), tuple(boxes[0][2:]), colors[0], -1)
    cv2.ellipse(img, ((boxes[1][0] + boxes[1][2]) // 2, (boxes[1][1] + boxes[1][3]) // 2),
                ((boxes[1][2] - boxes[1][0]) // 2, (boxes[1][3] - boxes[1][1]) // 2), 0, 0, 360, colors[1], -1)
    cv2.rectangle(img, tuple(boxes[2][:2]), tuple(boxes[2][2:]), colors[2], -1)
    cv2.circle(img, (95, 250), 35, colors[3], -1)
    return img, boxes, classes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as iou

    return iou(a.double(), b.double())


def match_detections(ref, ours, iou_thresh=0.99, score_tol=1e-3):
    """One-to-one greedy match (reference order) of ``(boxes, scores, classes)`` triples:
    same class, IoU > ``iou_thresh``, |score difference| < ``score_tol``. Returns counts,
    the unmatched reference indices and the worst IoU / score difference among the matches."""
    rb, rs, rc = (torch.as_tensor(x) for x in ref)
    ob, os_, oc = (torch.as_tensor(x) for x in ours)
    res = {"n_reference": int(len(rb)), "n_libra_d2": int(len(ob)), "matched": 0, "unmatched_reference": [],
           "min_iou": None, "max_score_diff": None}
    if len(rb) == 0:
        return res
    iou = box_iou(rb, ob) if len(ob) else torch.zeros(len(rb), 0, dtype=torch.float64)
    sdiff = (rs.double()[:, None] - os_.double()[None, :]).abs()
    ok = (iou > iou_thresh) & (sdiff < score_tol) & (rc.long()[:, None] == oc.long()[None, :])
    used = torch.zeros(len(ob), dtype=torch.bool)
    ious, sds = [], []
    for i in range(len(rb)):
        cand = (ok[i] & ~used).nonzero().flatten()
        if not len(cand):
            res["unmatched_reference"].append(i)
            continue
        j = int(cand[iou[i, cand].argmax()])
        used[j] = True
        ious.append(float(iou[i, j]))
        sds.append(float(sdiff[i, j]))
    res["matched"] = len(ious)
    res["min_iou"] = min(ious) if ious else None
    res["max_score_diff"] = max(sds) if sds else None
    return res


def compare_tensors(ref: np.ndarray, ours: np.ndarray) -> dict:
    """max |ours - ref| / max |ref| (and both parts) for two same-shaped arrays."""
    ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    if ref.shape != ours.shape:
        return {"shape_reference": list(ref.shape), "shape_libra_d2": list(ours.shape), "rel": None}
    diff = float(np.abs(ref - ours).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return {"shape": list(ref.shape), "max_abs_diff": diff, "max_abs_reference": scale,
            "rel": diff / scale if scale > 0 else diff}


def compare_losses(ref: dict, ours: dict) -> dict:
    """Term by term: libra-d2 name -> {reference, libra_d2, rel} (rel: |d| / |reference|)."""
    return compare_scaled_losses(ref, ours, 1.0, LOSS_NAMES)


def matching_differences(anchors: torch.Tensor, gt: torch.Tensor, min_pos_iou=0.3) -> dict:
    """Where the reference's RPN anchor assignment differs from detectron2's on these boxes:
    a box whose best anchor IoU is below ``min_pos_iou`` (detectron2 still makes those
    anchors positive), and anchors that are the best of several boxes (the reference gives
    them to the last such box, detectron2 to its highest-IoU box)."""
    iou = box_iou(gt, anchors)
    best = iou.max(dim=1).values
    is_best = iou == best[:, None]
    shared = int((is_best.sum(0) > 1).sum())
    low = [i for i in range(len(gt)) if float(best[i]) < min_pos_iou]
    return {"boxes_below_min_pos_iou": low, "anchors_best_for_several_boxes": shared,
            "fires": bool(low) or shared > 0}


def _priority(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g).double()


def _load_converted(checkpoint, trust, reference_matcher=False, decoder_clamp=True):
    from detectron2.modeling import build_model

    from libra_d2.utils.safe_load import load_checkpoint
    from tools.convert_mmdet_checkpoint import build_config, convert

    ckpt = load_checkpoint(checkpoint, trust=trust)
    sd = ckpt.get("state_dict", ckpt)
    arch, converted, _unused = convert(sd)
    cfg = build_config(arch, sd)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.LIBRA.REFERENCE_MATCHER = bool(reference_matcher)
    cfg.MODEL.LIBRA.REFERENCE_DECODER_CLAMP = bool(decoder_clamp)
    return arch, cfg, converted, build_model


def _model(cfg, converted, build_model):
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith(("pixel_mean", "pixel_std"))]
    if missing or unexpected:
        raise SystemExit(f"compare_with_mmdet: converted weights do not fit: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model


def libra_side(arch, cfg, converted, build_model, image_rgb, gt, settings, priority):
    """Everything libra-d2 reports for the comparison (same keys as the reference side)."""
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage


    h, w = image_rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1))).float()
    out = {"losses": {}, "sampled": {}}
    torch.manual_seed(0)
    model = _model(cfg, converted, build_model).eval()
    with torch.no_grad():
        images = model.preprocess_image([{"image": x}])
        feats = model.backbone(images.tensor)
        names = sorted(feats, key=lambda k: int(k[1:]))
        out["neck"] = [feats[k][0].numpy() for k in names]
        inst = model([{"image": x, "height": h, "width": w}])[0]["instances"]
    out["det"] = (inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy())
    if not settings:
        return out

    def priority_subset(candidates, num, generator=None):
        mask = torch.zeros_like(candidates)
        chosen = choose_by_priority(candidates.nonzero().flatten(), int(num), priority)
        mask[chosen] = True
        return mask

    for s in settings:
        torch.manual_seed(0)
        model = _model(cfg, converted, build_model).train()
        rpn = model.proposal_generator
        rpn.subset_sampler = priority_subset  # the RPN's draw, by the shared priority
        rpn.batch_size_per_image = s["rpn_batch"]
        rpn.positive_fraction = s["rpn_fraction"]
        rpn.neg_pos_ub = s["rpn_neg_pos_ub"]
        model.roi_heads.batch_size_per_image = ROI_ALL
        gt_inst = Instances((h, w), gt_boxes=Boxes(torch.tensor(gt["boxes"], dtype=torch.float32)),
                            gt_classes=torch.tensor(gt["classes"], dtype=torch.long))
        with EventStorage() as storage:
            losses = model([{"image": x, "instances": gt_inst}])
            hist = storage.latest()
        out["losses"][s["name"]] = {k: float(v.detach()) for k, v in losses.items()}
        out["sampled"][s["name"]] = {"rpn_positive": int(hist["rpn/num_pos_anchors"][0]),
                                     "rpn_negative": int(hist["rpn/num_neg_anchors"][0])}
    return out


def loss_settings(model_cfg, converted, build_model, image_rgb, gt):
    """The two training settings, with the RPN's all-sampled batch computed from the anchors."""
    model = _model(model_cfg, converted, build_model).eval()
    h, w = image_rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1))).float()
    with torch.no_grad():
        images = model.preprocess_image([{"image": x}])
        feats = model.backbone(images.tensor)
        rpn = model.proposal_generator
        anchors = torch.cat([a.tensor for a in rpn.anchor_generator([feats[f] for f in rpn.in_features])])
    gt_boxes = torch.tensor(gt["boxes"], dtype=torch.float32)
    iou = box_iou(gt_boxes, anchors).float()
    _, labels = rpn.anchor_matcher(iou)
    count, pos = int((labels >= 0).sum()), int((labels == 1).sum())
    frac = (pos + 0.5) / count  # int(count * frac) == pos: every positive, then every negative
    settings = [
        {"name": "all_sampled", "rpn_batch": count, "rpn_fraction": frac, "rpn_neg_pos_ub": -1.0,
         "mmdet_overrides": {"train_cfg.rpn.sampler.num": count, "train_cfg.rpn.sampler.pos_fraction": frac,
                             "train_cfg.rpn.sampler.neg_pos_ub": -1, "train_cfg.rcnn.sampler.num": ROI_ALL}},
        {"name": "rpn_cap", "rpn_batch": 256, "rpn_fraction": 0.5, "rpn_neg_pos_ub": 5.0,
         "mmdet_overrides": {"train_cfg.rpn.sampler.num": 256, "train_cfg.rpn.sampler.pos_fraction": 0.5,
                             "train_cfg.rpn.sampler.neg_pos_ub": 5, "train_cfg.rcnn.sampler.num": ROI_ALL}},
    ]
    return settings, anchors, {"anchors": int(len(anchors)), "non_ignored": count, "positive": pos}


RETINANET_LOSS_NAMES = {"loss_cls": "loss_cls", "loss_box_reg": "loss_bbox"}
# libra-d2's RetinaNet settings: (name, images, the keys that follow the reference's training)
RETINANET_REFERENCE_KEYS = {"MODEL.LIBRA.RETINANET_LOSS_NORMALIZER": "batch",
                            "MODEL.LIBRA.RETINANET_IGNORE_PADDING_ANCHORS": True}
RETINANET_SETTINGS = [("one_image", [0], {}), ("one_image_reference_keys", [0], RETINANET_REFERENCE_KEYS),
                      ("two_images", [0, 1], {}), ("two_images_reference_keys", [0, 1], RETINANET_REFERENCE_KEYS)]
OHEM_SAMPLER = {"type": "OHEMSampler", "num": 512, "pos_fraction": 0.25, "neg_pos_ub": -1, "add_gt_as_proposals": True}


def second_image(rgb, gt, h=250, w=330):
    """A smaller second image for a batch of two (its top-left crop, the boxes clipped to it;
    250 x 330 pads to 256 x 352 on its own, the batch to the first image's size)."""
    boxes, classes = [], []
    for b, c in zip(gt["boxes"], gt["classes"]):
        x1, y1, x2, y2 = b[0], b[1], min(b[2], w), min(b[3], h)
        if x2 - x1 >= 8 and y2 - y1 >= 8:
            boxes.append([x1, y1, x2, y2])
            classes.append(c)
    return np.ascontiguousarray(rgb[:h, :w]), {"boxes": boxes, "classes": classes}


def compare_scaled_losses(ref: dict, ours: dict, scale: float, names=None) -> dict:
    """Term by term as :func:`compare_losses`, libra-d2's terms multiplied by ``scale`` (its
    divisor over the reference's: both then divide the same sums by the reference's divisor)."""
    names = names or RETINANET_LOSS_NAMES
    out = {}
    for d2_name, mm_name in names.items():
        if d2_name not in ours or mm_name not in ref:
            out[d2_name] = {"missing": d2_name not in ours and "libra_d2" or "reference"}
            continue
        a, b = float(ref[mm_name]), float(ours[d2_name]) * scale
        out[d2_name] = {"reference": a, "libra_d2": b, "rel": abs(a - b) / abs(a) if a else abs(b)}
    return out


def _max_rel(terms: dict) -> float:
    return max(t.get("rel", float("inf")) for t in terms.values())


def _instances(gt, hw):
    from detectron2.structures import Boxes, Instances

    return Instances(hw, gt_boxes=Boxes(torch.tensor(gt["boxes"], dtype=torch.float32).reshape(-1, 4)),
                     gt_classes=torch.tensor(gt["classes"], dtype=torch.long))


def _tensor(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()


def libra_retinanet_losses(cfg, converted, build_model, images, gts):
    """libra-d2's RetinaNet loss terms in each of RETINANET_SETTINGS, with its divisor and the
    anchors its labelling made foreground and ignored."""
    from detectron2.utils.events import EventStorage

    out = {}
    for name, idx, keys in RETINANET_SETTINGS:
        c = cfg.clone()
        c.defrost()
        for k, v in keys.items():
            c.merge_from_list([k, v])
        torch.manual_seed(0)
        model = _model(c, converted, build_model).train()
        inputs = [{"image": _tensor(images[i]), "instances": _instances(gts[i], images[i].shape[:2])} for i in idx]
        with EventStorage():
            losses = model(inputs)
            with torch.no_grad():
                batch = model.preprocess_image(inputs)
                feats = model.backbone(batch.tensor)
                anchors = model.anchor_generator([feats[f] for f in model.head_in_features])
                labels = torch.stack(model.label_anchors(anchors, [x["instances"] for x in inputs])[0])
        out[name] = {"terms": {k: float(v.detach()) for k, v in losses.items()}, "keys": keys,
                     "targets": {"foreground": int(((labels >= 0) & (labels != model.num_classes)).sum()),
                                 "ignored": int((labels == -1).sum()), "anchors": int(labels.numel()),
                                 "normalizer": model.last_loss_normalizer,
                                 "batch_shape": list(batch.tensor.shape[-2:])}}
    return out


def retinanet_matching(cfg, converted, build_model, rgb, gt):
    """:func:`matching_differences` on RetinaNet's anchors (the reference's minimum IoU 0)."""
    model = _model(cfg, converted, build_model).eval()
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image([{"image": _tensor(rgb)}]).tensor)
        anchors = torch.cat([a.tensor for a in model.anchor_generator([feats[f] for f in model.head_in_features])])
    return matching_differences(anchors, torch.tensor(gt["boxes"]), min_pos_iou=0.0)


def ohem_cases(hw, gt, seed=0):
    """Two proposal sets for one image: ``pool_larger`` (about 600 boxes jittered around the
    ground truth and 1,400 random ones: both roles' pools exceed their counts, 128 / 384) and
    ``pool_smaller`` (its first 15 per box and 30 random: every candidate is taken)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    gtb = torch.tensor(gt["boxes"], dtype=torch.float32)
    near = []
    for b in gtb:
        size = (b[2:] - b[:2]).repeat(2)
        near.append(b + torch.randn(150, 4, generator=g) * size * 0.12)
    rnd = torch.rand(1400, 4, generator=g) * torch.tensor([w, h, w, h], dtype=torch.float32)
    rnd = torch.cat([torch.minimum(rnd[:, :2], rnd[:, 2:]), torch.maximum(rnd[:, :2], rnd[:, 2:]) + 4], dim=1)

    def tidy(boxes):
        boxes = boxes.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 2) & ((boxes[:, 3] - boxes[:, 1]) > 2)
        return boxes[keep]

    larger = tidy(torch.cat(near + [rnd]))
    smaller = tidy(torch.cat([n[:15] for n in near] + [rnd[:30]]))
    overrides = {"train_cfg.rcnn.sampler": OHEM_SAMPLER}
    return [{"name": "pool_larger", "proposals": larger.tolist(), "mmdet_overrides": overrides},
            {"name": "pool_smaller", "proposals": smaller.tolist(), "mmdet_overrides": overrides}]


def libra_ohem(cfg, converted, build_model, rgb, gt, case):
    """The boxes libra-d2's ``ohem`` sampler (both roles, 512 per image, a quarter positive)
    takes from ``case``'s proposals, through LibraROIHeads.label_and_sample_proposals."""
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    c = cfg.clone()
    c.defrost()
    c.merge_from_list(["MODEL.LIBRA.POS_SAMPLER", "ohem", "MODEL.LIBRA.NEG_SAMPLER", "ohem",
                       "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", OHEM_SAMPLER["num"],
                       "MODEL.ROI_HEADS.POSITIVE_FRACTION", OHEM_SAMPLER["pos_fraction"],
                       "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", OHEM_SAMPLER["add_gt_as_proposals"]])
    torch.manual_seed(0)
    model = _model(c, converted, build_model).train()
    hw = rgb.shape[:2]
    props = Instances(hw, proposal_boxes=Boxes(torch.tensor(case["proposals"], dtype=torch.float32)))
    props.objectness_logits = torch.zeros(len(props))
    with torch.no_grad(), EventStorage():
        feats = model.backbone(model.preprocess_image([{"image": _tensor(rgb)}]).tensor)
        sampled = model.roi_heads.label_and_sample_proposals([props], [_instances(gt, hw)], features=feats)[0]
    pos = sampled.gt_classes != model.roi_heads.num_classes
    boxes = sampled.proposal_boxes.tensor
    return {"positive": boxes[pos].tolist(), "negative": boxes[~pos].tolist()}


def compare_choices(ref: dict, ours: dict) -> dict:
    """The two samplers' chosen boxes as sets (boxes compared exactly, as float32 values)."""
    def keyset(boxes):
        return {tuple(np.asarray(b, np.float32).tolist()) for b in boxes}

    out = {}
    for role in ("positive", "negative"):
        r, o = keyset(ref[role]), keyset(ours[role])
        out[role] = {"reference": len(ref[role]), "libra_d2": len(ours[role]), "common": len(r & o),
                     "only_reference": sorted(r - o)[:10], "only_libra_d2": sorted(o - r)[:10],
                     "equal": r == o and len(ref[role]) == len(ours[role])}
    return out


def parse_gt(specs):
    boxes, classes = [], []
    for s in specs:
        parts = s.split(",")
        if len(parts) != 5:
            raise SystemExit(f"compare_with_mmdet: --gt {s!r}: expected x1,y1,x2,y2,class")
        try:
            x1, y1, x2, y2 = (float(p) for p in parts[:4])
            c = int(parts[4])
        except ValueError:
            raise SystemExit(f"compare_with_mmdet: --gt {s!r}: expected four numbers and a class index") from None
        if not (x2 > x1 and y2 > y1):
            raise SystemExit(f"compare_with_mmdet: --gt {s!r}: an empty box (needs x2 > x1 and y2 > y1)")
        boxes.append([x1, y1, x2, y2])
        classes.append(c)
    return {"boxes": boxes, "classes": classes}


def run_reference(mmdet_python, config, checkpoint, io_dir):
    side = os.path.join(ROOT, "dev", "reference", "mmdet_reference_side.py")
    probe = subprocess.run([mmdet_python, "-c", "import mmdet, mmengine, mmcv"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"compare_with_mmdet: {mmdet_python} cannot import mmdet/mmengine/mmcv: "
                         f"{(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    proc = subprocess.run([mmdet_python, side, "run", "--config", config, "--checkpoint", checkpoint, "--io", io_dir],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compare_with_mmdet: the reference side failed:\n{proc.stderr[-3000:]}")
    arrays = dict(np.load(os.path.join(io_dir, "reference.npz")))
    return arrays, json.load(open(os.path.join(io_dir, "reference.json")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mmdet-python", required=True, help="python of an environment with mmdetection 3.x")
    ap.add_argument("--mmdet-config", required=True, help="the reference config the checkpoint belongs to")
    ap.add_argument("--checkpoint", required=True, help="the reference (mmdetection) checkpoint")
    ap.add_argument("--image", help="an image file (default: a generated 320x416 image)")
    ap.add_argument("--gt", action="append", default=[], metavar="x1,y1,x2,y2,class",
                    help="ground-truth box for --train-losses (repeatable; default: the generated objects)")
    ap.add_argument("--train-losses", action="store_true",
                    help="also compare training-loss terms (Faster R-CNN: two sampler settings; RetinaNet: one image "
                    "and a batch of two, with detectron2's conventions and with the reference-training keys)")
    ap.add_argument("--ohem", action="store_true",
                    help="Faster R-CNN: also compare the proposals OHEM chooses (the reference's OHEMSampler vs 'ohem')")
    ap.add_argument("--iou", type=float, default=0.99)
    ap.add_argument("--score-tol", type=float, default=1e-3)
    ap.add_argument("--neck-tol", type=float, default=1e-4, help="relative tolerance for the neck outputs")
    ap.add_argument("--loss-tol", type=float, default=1e-4, help="relative tolerance per loss term")
    ap.add_argument("--trust-checkpoint", action="store_true", help="unpickle everything in --checkpoint")
    ap.add_argument("--reference-matcher", action="store_true",
                    help="libra-d2 side with MODEL.LIBRA.REFERENCE_MATCHER (the reference's low-quality matching)")
    ap.add_argument("--detectron2-decoder", action="store_true",
                    help="libra-d2 side without MODEL.LIBRA.REFERENCE_DECODER_CLAMP (detectron2's one-sided clamp)")
    ap.add_argument("-o", "--output", help="report json")
    args = ap.parse_args(argv)

    from dev.records.provenance import provenance
    from libra_d2.utils.safe_load import UntrustedCheckpointError

    t0 = time.time()

    if args.image:
        import cv2

        bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"compare_with_mmdet: cannot read image {args.image}")
        rgb = bgr[:, :, ::-1].copy()
        gt = parse_gt(args.gt) if args.gt else None
    else:
        rgb, boxes, classes = synthetic_image()
        gt = parse_gt(args.gt) if args.gt else {"boxes": boxes, "classes": classes}
    try:
        arch, cfg, converted, build_model = _load_converted(args.checkpoint, args.trust_checkpoint,
                                                            args.reference_matcher, not args.detectron2_decoder)
    except UntrustedCheckpointError as e:
        raise SystemExit(f"compare_with_mmdet: {e}") from None
    if args.ohem and arch != "rcnn":
        raise SystemExit("compare_with_mmdet: --ohem compares a two-stage model's RoI sampling (Libra Faster R-CNN)")
    if (args.train_losses or args.ohem) and not gt:
        raise SystemExit("compare_with_mmdet: --train-losses / --ohem with --image need --gt boxes")

    report = {"checkpoint": os.path.abspath(args.checkpoint), "mmdet_config": args.mmdet_config,
              "architecture": "Libra Faster R-CNN" if arch == "rcnn" else "Libra RetinaNet",
              "image_hw": list(rgb.shape[:2]), "image": args.image or "generated (dev/reference/compare_with_mmdet.py)",
              "torch": torch.__version__, "reference_matcher": bool(args.reference_matcher),
              "reference_decoder_clamp": not args.detectron2_decoder}
    settings, anchor_info, retina_images, retina_gts, cases = [], None, None, None, []
    if args.train_losses and arch == "retinanet":
        rgb2, gt2 = second_image(rgb, gt)
        retina_images, retina_gts = [rgb, rgb2], [gt, gt2]
        report["gt"] = retina_gts
        report["image_hw"] = [list(x.shape[:2]) for x in retina_images]
    if args.ohem:
        cases = ohem_cases(rgb.shape[:2], gt)
        report["gt"] = gt
    if args.train_losses and arch == "rcnn":
        settings, anchors, anchor_info = loss_settings(cfg, converted, build_model, rgb, gt)
        report["gt"] = gt
        report["rpn_anchors"] = anchor_info
        report["matching_differences"] = matching_differences(anchors, torch.tensor(gt["boxes"]))
    priority = _priority(2_000_000)
    with tempfile.TemporaryDirectory() as io_dir:
        np.save(os.path.join(io_dir, "image_bgr.npy"), np.ascontiguousarray(rgb[:, :, ::-1]))
        np.save(os.path.join(io_dir, "priority.npy"), priority.numpy())
        request = {"train_losses": bool(settings), "gt": gt, "settings": settings}
        if retina_images:
            np.save(os.path.join(io_dir, "image1_bgr.npy"), np.ascontiguousarray(retina_images[1][:, :, ::-1]))
            request.update(n_images=2, gts=retina_gts, retinanet_losses=[
                {"name": name, "images": idx} for name, idx, keys in RETINANET_SETTINGS if not keys])
        if cases:
            request["ohem"] = cases
        json.dump(request, open(os.path.join(io_dir, "request.json"), "w"))
        ref_arrays, ref_json = run_reference(args.mmdet_python, args.mmdet_config, os.path.abspath(args.checkpoint),
                                             io_dir)
    ours = libra_side(arch, cfg, converted, build_model, rgb, gt, settings, priority)
    report["mmdet_version"] = ref_json.get("mmdet_version")
    if retina_images:
        ours_retina = libra_retinanet_losses(cfg, converted, build_model, retina_images, retina_gts)
    if cases:
        ours_ohem = {c["name"]: libra_ohem(cfg, converted, build_model, rgb, gt, c) for c in cases}

    ref_neck = [ref_arrays[f"neck{i}"] for i in range(sum(k.startswith("neck") for k in ref_arrays))]
    neck = [compare_tensors(r, o) for r, o in zip(ref_neck, ours["neck"])]
    report["neck"] = {"levels": neck, "max_rel": max((n["rel"] for n in neck if n["rel"] is not None), default=None),
                      "n_levels": [len(ref_neck), len(ours["neck"])]}
    ref_det = (ref_arrays["det_boxes"], ref_arrays["det_scores"], ref_arrays["det_classes"])
    report["detections"] = match_detections(ref_det, ours["det"], args.iou, args.score_tol)
    report["losses"] = {}
    for s in settings:
        entry = compare_losses(ref_json["losses"][s["name"]], ours["losses"][s["name"]])
        sampled = ours["sampled"][s["name"]]
        report["losses"][s["name"]] = {"terms": entry, "rpn_sampled": sampled,
                                       "rpn_sampled_total": sampled["rpn_positive"] + sampled["rpn_negative"],
                                       "max_rel": max(t.get("rel", float("inf")) for t in entry.values())}

    if retina_images:
        report["retinanet_losses"] = {}
        for name, idx, keys in RETINANET_SETTINGS:
            ref = ref_json["retinanet_losses"][name.replace("_reference_keys", "")]
            ours_s = ours_retina[name]
            scale = ours_s["targets"]["normalizer"] / ref["targets"]["avg_factor"]
            report["retinanet_losses"][name] = {
                "images": idx, "libra_d2_keys": keys,
                "raw": compare_scaled_losses(ref["terms"], ours_s["terms"], 1.0),
                "equal_normaliser": compare_scaled_losses(ref["terms"], ours_s["terms"], scale),
                "targets": {"reference": ref["targets"], "libra_d2": ours_s["targets"]},
            }
        report["retinanet_matching_differences"] = retinanet_matching(cfg, converted, build_model, rgb, gt)
    if cases:
        report["ohem"] = {c["name"]: dict(compare_choices(ref_json["ohem"][c["name"]], ours_ohem[c["name"]]),
                                          proposals=len(c["proposals"]))
                          for c in cases}
    checks = {"neck": report["neck"]["max_rel"] is not None and report["neck"]["max_rel"] <= args.neck_tol
              and len(ref_neck) == len(ours["neck"]),
              "detections": report["detections"]["matched"] == report["detections"]["n_reference"]
              == report["detections"]["n_libra_d2"]}
    for name, entry in report["losses"].items():
        checks[f"losses_{name}"] = entry["max_rel"] <= args.loss_tol
    for name, entry in report.get("retinanet_losses", {}).items():
        # with the reference-training keys the raw terms agree; with detectron2's, the sums
        # agree once the divisors are made equal where no anchor lies in a batch's padding
        if entry["libra_d2_keys"]:
            checks[f"retinanet_losses_{name}"] = _max_rel(entry["raw"]) <= args.loss_tol
        elif len(entry["images"]) == 1:
            checks[f"retinanet_losses_{name}_equal_normaliser"] = _max_rel(entry["equal_normaliser"]) <= args.loss_tol
    for name, entry in report.get("ohem", {}).items():
        checks[f"ohem_{name}"] = entry["positive"]["equal"] and entry["negative"]["equal"]
    report["checks"] = checks
    report["provenance"] = provenance(seconds=round(time.time() - t0, 1))
    report["tolerances"] = {"iou": args.iou, "score": args.score_tol, "neck_rel": args.neck_tol,
                            "loss_rel": args.loss_tol}
    print(f"{report['architecture']} vs mmdetection {report['mmdet_version']}:")
    print(f"  neck: {len(neck)} levels, max relative difference {report['neck']['max_rel']:.3g}")
    d = report["detections"]
    print(f"  detections: {d['matched']}/{d['n_reference']} of the reference's matched ({d['n_libra_d2']} here), "
          f"min IoU {d['min_iou']}, max score difference {d['max_score_diff']}")
    for name, entry in report["losses"].items():
        terms = ", ".join(f"{k} {v.get('libra_d2', float('nan')):.6g}/{v.get('reference', float('nan')):.6g}"
                          for k, v in entry["terms"].items())
        print(f"  losses [{name}] (RPN sampled {entry['rpn_sampled_total']}): max relative difference "
              f"{entry['max_rel']:.3g}; libra-d2/reference: {terms}")
    for name, entry in report.get("retinanet_losses", {}).items():
        t = entry["targets"]
        print(f"  RetinaNet losses [{name}]: raw max relative difference {_max_rel(entry['raw']):.3g}, with equal "
              f"divisors {_max_rel(entry['equal_normaliser']):.3g}; divisor {t['libra_d2']['normalizer']:.4g} here, "
              f"{t['reference']['avg_factor']:.4g} there; foreground {t['libra_d2']['foreground']}/"
              f"{t['reference']['foreground']}")
    for name, entry in report.get("ohem", {}).items():
        print(f"  OHEM [{name}, {entry['proposals']} proposals]: positives {entry['positive']['common']} common of "
              f"{entry['positive']['reference']}/{entry['positive']['libra_d2']}, negatives "
              f"{entry['negative']['common']} of {entry['negative']['reference']}/{entry['negative']['libra_d2']}")
    if anchor_info:
        print(f"  anchor-matching differences fire on these boxes: {report['matching_differences']['fires']}")
    print("  checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.output}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
