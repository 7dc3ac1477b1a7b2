"""LibraRPN (negative cap, Balanced L1) and LibraRetinaNet's Balanced L1 against hand computations."""
import math

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from libra_d2.rpn import cap_negatives


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
    assert math.isclose(float(losses["loss_rpn_loc"]), total / (rpn.batch_size_per_image * 1), rel_tol=1e-5)
    assert math.isclose(float(losses["loss_rpn_cls"]), 3 * math.log(2) / rpn.batch_size_per_image, rel_tol=1e-5)
