"""LibraRPN (negative cap, Balanced L1) and LibraRetinaNet's Balanced L1 against hand computations."""
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from libra_d2.modeling.rpn import cap_negatives


def test_cap_negatives_with_few_positives_and_none():
    label = torch.zeros(5000, dtype=torch.long)
    label[[10, 20, 30]] = 1
    label[100:200] = -1
    out = cap_negatives(label.clone(), 256, 0.5, 5.0)
    assert int((out == 1).sum()) == 3 and int((out == 0).sum()) == 15
    assert bool((out[100:200] == -1).all())
    none = torch.zeros(5000, dtype=torch.long)
    out = cap_negatives(none.clone(), 256, 0.5, 5.0)
    assert int((out == 1).sum()) == 0 and int((out == 0).sum()) == 5
    many = torch.zeros(5000, dtype=torch.long)
    many[:400] = 1
    out = cap_negatives(many.clone(), 256, 0.5, 5.0)
    assert int((out == 1).sum()) == 128 and int((out == 0).sum()) == 128  # batch size still bounds


def test_libra_rpn_cap_in_model_and_off_switch(libra_cfg):
    model = build_model(libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    rpn = model.proposal_generator
    assert type(rpn).__name__ == "LibraRPN" and rpn.neg_pos_ub == 5.0
    label = torch.zeros(3000, dtype=torch.long)
    label[:2] = 1
    out = rpn._subsample_labels(label)
    assert int((out == 0).sum()) == 10
    rpn.neg_pos_ub = -1.0
    label = torch.zeros(3000, dtype=torch.long)
    label[:2] = 1
    out = rpn._subsample_labels(label)
    assert int((out == 0).sum()) == rpn.batch_size_per_image - 2


def bl1(x, alpha=0.5, gamma=1.5, beta=1.0):
    x = abs(x)
    b = math.exp(gamma / alpha) - 1
    if x < beta:
        return alpha / b * (b * x + 1) * math.log(b * x / beta + 1) - alpha * x
    return gamma * x + gamma / b - alpha * beta


def deltas(anchor, gt, weights):
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    wx, wy, ww, wh = weights
    return [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * math.log(gw / aw), wh * math.log(gh / ah)]


def tiny_case():
    anchors = [Boxes(torch.tensor([[0.0, 0, 20, 20], [30, 30, 50, 60]])), Boxes(torch.tensor([[5.0, 5, 45, 45]]))]
    gt_boxes = [torch.tensor([[2.0, 1, 22, 25], [0, 0, 1, 1], [8, 2, 40, 50]])]
    pred = [torch.tensor([[[0.1, -0.2, 0.05, 0.3], [0.0, 0.0, 0.0, 0.0]]]), torch.tensor([[[0.5, 0.02, -0.4, 2.0]]])]
    return anchors, gt_boxes, pred


def hand_loss(gt_boxes, beta):
    """Balanced L1 summed over the positive anchors 0 and 2 of tiny_case, by hand."""
    flat_anchors = [[0.0, 0, 20, 20], [30, 30, 50, 60], [5.0, 5, 45, 45]]
    flat_pred = [[0.1, -0.2, 0.05, 0.3], [0, 0, 0, 0], [0.5, 0.02, -0.4, 2.0]]
    total = 0.0
    for i in (0, 2):
        t = deltas(flat_anchors[i], gt_boxes[0][i].tolist(), (1.0, 1.0, 1.0, 1.0))
        total += sum(bl1(p - q, beta=beta) for p, q in zip(flat_pred[i], t))
    return total


def test_retinanet_balanced_l1_equals_hand_computation(libra_cfg):
    model = build_model(libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml"))
    assert type(model).__name__ == "LibraRetinaNet"
    k = model.num_classes
    anchors, gt_boxes, pred = tiny_case()
    gt_labels = [torch.tensor([2, k, 0])]  # anchor 0 and 2 positive, anchor 1 background
    logits = [torch.zeros(1, 2, k), torch.zeros(1, 1, k)]
    with EventStorage():
        losses = model.losses(anchors, logits, gt_labels, pred, gt_boxes)
    total = hand_loss(gt_boxes, beta=0.11)
    normalizer = 0.9 * 100 + 0.1 * 2  # detectron2's EMA of the foreground count, first step
    assert math.isclose(float(losses["loss_box_reg"]), total / normalizer, rel_tol=1e-5)


def test_rpn_balanced_l1_equals_hand_computation(libra_cfg):
    model = build_model(libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "MODEL.RPN.BBOX_REG_LOSS_TYPE", "balanced_l1"))
    rpn = model.proposal_generator
    anchors, gt_boxes, pred = tiny_case()
    gt_labels = [torch.tensor([1, 0, 1])]
    logits = [torch.zeros(1, 2), torch.zeros(1, 1)]
    with EventStorage():
        losses = rpn.losses(anchors, logits, gt_labels, pred, gt_boxes)
    total = hand_loss(gt_boxes, beta=1.0)
    # the Libra config caps negatives, so the divisor is the 3 anchors sampled, not 256
    assert rpn.neg_pos_ub == 5.0
    assert math.isclose(float(losses["loss_rpn_loc"]), total / 3, rel_tol=1e-5)
    assert math.isclose(float(losses["loss_rpn_cls"]), 3 * math.log(2) / 3, rel_tol=1e-5)


def _rpn_losses_on_capped_batch(rpn, seed):
    """Two images, 2000 anchors each, few positives: label with the model's own matcher-free
    sampler (the cap binds), then compute the losses with fixed predictions."""
    g = torch.Generator().manual_seed(seed)
    n = 2000
    xy = torch.rand(n, 2, generator=g) * 200
    wh = 8 + torch.rand(n, 2, generator=g) * 40
    anchors = [Boxes(torch.cat([xy, xy + wh], dim=1))]
    labels, gts = [], []
    for num_pos in (3, 11):
        label = torch.zeros(n, dtype=torch.long)
        label[torch.randperm(n, generator=g)[:num_pos]] = 1
        label[torch.randperm(n, generator=g)[:300]] = -1  # ignored anchors stay ignored
        labels.append(rpn._subsample_labels(label))
        gts.append(anchors[0].tensor + torch.randn(n, 4, generator=g))
    logits = [torch.randn(2, n, generator=g)]
    deltas = [torch.randn(2, n, 4, generator=g) * 0.1]
    with EventStorage():
        return rpn.losses(anchors, logits, labels, deltas, gts), labels, logits


def test_rpn_loss_normaliser_is_the_sampled_count_under_the_cap(libra_cfg):
    model = build_model(libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    rpn = model.proposal_generator
    torch.manual_seed(0)
    losses, labels, logits = _rpn_losses_on_capped_batch(rpn, seed=3)
    sampled = [int((lab >= 0).sum()) for lab in labels]
    pos = [int((lab == 1).sum()) for lab in labels]
    # the cap binds: positives + 5 negatives each, far below 256 per image
    assert sampled == [p + 5 * p for p in pos] and sum(sampled) < 2 * rpn.batch_size_per_image
    # classification loss recomputed here, divided by the count made here
    lab = torch.stack(labels)
    valid = lab >= 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[0][valid], lab[valid].float(), reduction="sum")
    assert math.isclose(float(losses["loss_rpn_cls"]), float(bce) / sum(sampled), rel_tol=1e-5)
    assert rpn.loss_normalizer(labels) == float(sum(sampled))

    # cap off: detectron2's fixed BATCH_SIZE_PER_IMAGE * #images, unchanged
    rpn.neg_pos_ub = -1.0
    torch.manual_seed(0)
    losses_off, labels_off, logits_off = _rpn_losses_on_capped_batch(rpn, seed=3)
    lab = torch.stack(labels_off)
    valid = lab >= 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits_off[0][valid], lab[valid].float(), reduction="sum")
    assert math.isclose(float(losses_off["loss_rpn_cls"]), float(bce) / (2 * rpn.batch_size_per_image), rel_tol=1e-5)
    # every positive is sampled either way, so the box loss's sum is the same; only its divisor moves
    assert torch.equal(torch.stack(labels) == 1, torch.stack(labels_off) == 1)
    assert math.isclose(float(losses["loss_rpn_loc"]) * sum(sampled),
                        float(losses_off["loss_rpn_loc"]) * 2 * rpn.batch_size_per_image, rel_tol=1e-5)


def _retinanet_outside_case(k):
    """One level, 150 anchors on an 80x400 image: 10 highest-scoring anchors lie wholly right
    of the image (empty once clipped), 140 disjoint ones inside with lower scores."""
    inside = [[4.0 * i % 380, 10.0 * (i // 95), 4.0 * i % 380 + 3, 10.0 * (i // 95) + 8] for i in range(140)]
    outside = [[420.0 + 5 * i, 10.0, 424.0 + 5 * i, 20.0] for i in range(10)]
    anchors = [Boxes(torch.tensor(outside + inside))]
    # scores that pass the 0.05 threshold whether or not the caller applied the sigmoid
    logits = torch.full((150, k), -9.0)
    logits[:10, 0] = 0.95  # the outside boxes rank first
    logits[10:, 0] = torch.linspace(0.9, 0.1, 140)
    return anchors, [logits], [torch.zeros(150, 4)], (80, 400)


def test_retinanet_clip_before_nms_drops_empty_boxes_before_the_top_k(libra_cfg):
    cfg = libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml", "MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS", True,
                    "TEST.DETECTIONS_PER_IMAGE", 100)
    model = build_model(cfg).eval()
    anchors, logits, deltas, size = _retinanet_outside_case(model.num_classes)
    with torch.no_grad():
        out = model.inference_single_image(anchors, [x.clone() for x in logits], deltas, size)
    boxes = out.pred_boxes.tensor
    assert len(out) == 100  # the top 100 non-empty boxes, as the reference returns
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    # they are exactly the 100 best-scoring inside anchors (disjoint, so NMS keeps them all)
    expected = anchors[0].tensor[10:110]
    assert torch.equal(boxes[boxes[:, 1].argsort(stable=True)].sort(0).values, expected.sort(0).values)

    # detectron2's order (the option off): the 10 outside boxes take 10 of the 100 places
    model.clip_before_nms = False
    with torch.no_grad():
        out = model.inference_single_image(anchors, [x.clone() for x in logits], deltas, size)
    out.pred_boxes.clip(size)
    assert int(out.pred_boxes.nonempty().sum()) == 90


def test_retinanet_group_norm_head_builds_on_this_detectron2(libra_cfg):
    """MODEL.RETINANET.NORM "GN" builds a head of GroupNorm(32, C) layers for the plain and the
    Libra RetinaNet (detectron2 0.6's own head raises: libra_d2.modeling.retinanet_gn), with parameter names
    that do not depend on the detectron2 version, and it trains."""
    from libra_d2.modeling.retinanet_gn import enable_retinanet_group_norm, group_norm, retinanet_head_builds_group_norm

    assert (group_norm(64).num_groups, group_norm(64).num_channels) == (32, 64)
    changed = enable_retinanet_group_norm()
    assert changed == (not retinanet_head_builds_group_norm())  # only where detectron2's head raises
    for path in ("builtin/retinanet_R_18_FPN_cpu.yaml", "builtin/libra_retinanet_R_18_FPN_cpu.yaml"):
        model = build_model(libra_cfg(path, "MODEL.RETINANET.NORM", "GN"))
        norms = [(name, m) for name, m in model.head.named_modules() if isinstance(m, torch.nn.GroupNorm)]
        assert [n for n, _ in norms] == [f"{b}.{i}" for b in ("cls_subnet", "bbox_subnet") for i in (1, 4, 7, 10)]
        assert {(m.num_groups, m.num_channels) for _, m in norms} == {(32, 64)}
    model.train()
    gt = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 12, 60, 70]])), gt_classes=torch.tensor([1]))
    images = [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "instances": gt}]
    with EventStorage():
        losses = model(images)
    sum(losses.values()).backward()
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert model.head.cls_subnet[1].weight.grad is not None


@pytest.mark.parametrize("balanced", [True, False])
def test_retinanet_batch_normaliser_divides_by_this_batch_foreground_count(libra_cfg, balanced):
    opts = ["MODEL.LIBRA.RETINANET_LOSS_NORMALIZER", "batch"]
    if not balanced:
        opts += ["MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "smooth_l1"]
    batch = build_model(libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml", *opts))
    ema = build_model(libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml", *opts[2:]))
    k = batch.num_classes
    anchors, gt_boxes, pred = tiny_case()
    gt_labels = [torch.tensor([2, k, 0])]
    logits = [torch.full((1, 2, k), 0.3), torch.full((1, 1, k), -0.2)]
    with EventStorage():
        a = batch.losses(anchors, logits, gt_labels, pred, gt_boxes)
        b = ema.losses(anchors, logits, gt_labels, pred, gt_boxes)
    assert batch.last_loss_normalizer == 2.0
    for name in ("loss_cls", "loss_box_reg"):  # same sums, divided by 2 vs 0.9 * 100 + 0.1 * 2
        assert math.isclose(float(a[name]) * 2, float(b[name]) * (90 + 0.2), rel_tol=1e-6)
    with pytest.raises(Exception, match="RETINANET_LOSS_NORMALIZER"):
        build_model(libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml",
                              "MODEL.LIBRA.RETINANET_LOSS_NORMALIZER", "per_image"))


def test_retinanet_padding_anchors_are_ignored_only_when_asked(libra_cfg):
    from detectron2.structures import Instances

    cfg = libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml")
    plain = build_model(cfg)
    cfg.MODEL.LIBRA.RETINANET_IGNORE_PADDING_ANCHORS = True
    model = build_model(cfg)
    big, small = (192, 256), (128, 160)  # a batch padded to 192 x 256 (multiples of 32)
    feats = {f: torch.zeros(2, 1, math.ceil(big[0] / s), math.ceil(big[1] / s))
             for f, s in zip(model.head_in_features, model.anchor_generator.strides)}
    anchors = model.anchor_generator([feats[f] for f in model.head_in_features])
    gts = []
    for size in (big, small):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12, 60, 70], [90, 40, 150, 120]]))
        inst.gt_classes = torch.tensor([1, 3])
        gts.append(inst)
    labels, _ = model.label_anchors(anchors, gts)
    ref_labels, _ = plain.label_anchors(anchors, gts)
    assert torch.equal(labels[0], ref_labels[0])  # the image that fills the batch: nothing changes
    inside = model.anchors_inside_image(anchors, small)
    # by hand, from the feature grids (anchors run row by row, A per cell): a cell inside
    # 128 x 160 (already multiples of 32) at every stride
    by_hand = []
    for f, s in zip(model.head_in_features, model.anchor_generator.strides):
        fh, fw = feats[f].shape[-2:]
        rows, cols = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
        cell = (rows < math.ceil(128 / s)) & (cols < math.ceil(160 / s))
        by_hand.append(cell.reshape(-1, 1).expand(-1, model.anchor_generator.num_cell_anchors[0]).reshape(-1))
    by_hand = torch.cat(by_hand)
    assert torch.equal(inside, by_hand) and 0 < int(inside.sum()) < len(inside)
    assert bool((labels[1][~inside] == -1).all())
    assert bool((ref_labels[1][~inside] == model.num_classes).any())  # detectron2: background there
    assert torch.equal(labels[1][inside] != -1, ref_labels[1][inside] != -1)
