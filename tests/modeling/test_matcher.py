"""ReferenceMatcher against the reference's assignment rule, written out here loop by loop."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher

from libra_d2.config import LibraConfigError, validate_libra_config
from libra_d2.modeling.matcher import ReferenceMatcher


def reference_assign(iou, neg_thr, pos_thr, min_pos_iou):
    """The reference's max-IoU assignment (match_low_quality, gt_max_assign_all), as loops:
    returns (gt index or -1, label 1 / 0 / -1) per prediction."""
    m, n = iou.shape
    gt_idx, label = [-1] * n, [-1] * n
    for j in range(n):
        col = iou[:, j].tolist()
        best = max(col)
        if best < neg_thr:
            label[j] = 0
        if best >= pos_thr:
            label[j], gt_idx[j] = 1, col.index(best)
        elif label[j] != 0:
            gt_idx[j] = col.index(best)
    for i in range(m):  # in ground-truth order: a later box overrides an earlier one
        best = max(iou[i].tolist())
        if best >= min_pos_iou:
            for j in range(n):
                if iou[i, j] == best:
                    label[j], gt_idx[j] = 1, i
    return gt_idx, label


def constructed_case():
    g = torch.Generator().manual_seed(0)
    iou = (torch.rand(4, 30, generator=g) * 0.6).round(decimals=2)
    iou[0, 5] = 0.9   # a threshold positive of box 0 ...
    iou[3, 5] = 0.95  # ... that is box 3's best too: the reference gives it to box 3 (later)
    iou[1, :] = torch.clamp(iou[1, :], max=0.2)  # box 1: best IoU 0.2, below 0.3
    iou[2, 7] = iou[2, 8] = 0.66  # box 2: a tie for its best
    return iou


@pytest.mark.parametrize("min_iou", [0.0, 0.3])
def test_reference_matcher_equals_the_reference_rule(min_iou):
    iou = constructed_case()
    matches, labels = ReferenceMatcher([0.3, 0.7], [0, -1, 1], min_low_quality_iou=min_iou)(iou)
    gt_idx, label = reference_assign(iou, 0.3, 0.7, min_iou)
    assert labels.tolist() == label
    pos = [j for j in range(iou.shape[1]) if label[j] == 1]
    assert [int(matches[j]) for j in pos] == [gt_idx[j] for j in pos]


def test_detectron2_matcher_differs_on_the_same_case():
    """The two differences the option exists for, on the constructed case."""
    iou = constructed_case()
    d2_matches, d2_labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    ref_matches, ref_labels = ReferenceMatcher([0.3, 0.7], [0, -1, 1], min_low_quality_iou=0.3)(iou)
    box1_best = (iou[1] == iou[1].max()).nonzero().flatten()
    assert bool((d2_labels[box1_best] == 1).all())  # detectron2: positive at IoU 0.2
    assert int(d2_matches[5]) == 3 and int(ref_matches[5]) == 3  # highest IoU and last agree here
    iou2 = iou.clone()
    iou2[3, 5] = 0.85  # box 3's best is still anchor 5, but box 0 has the higher IoU
    assert int(Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou2)[0][5]) == 0
    assert int(ReferenceMatcher([0.3, 0.7], [0, -1, 1], min_low_quality_iou=0.3)(iou2)[0][5]) == 3


def test_reference_matcher_config_switch_and_bad_value(libra_cfg):
    rpn = build_model(libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml")).proposal_generator
    assert type(rpn.anchor_matcher) is Matcher  # detectron2's by default
    model = build_model(libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "MODEL.LIBRA.REFERENCE_MATCHER", True))
    m = model.proposal_generator.anchor_matcher
    assert isinstance(m, ReferenceMatcher) and m.min_low_quality_iou == 0.3
    retina = build_model(libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml", "MODEL.LIBRA.REFERENCE_MATCHER", True))
    assert isinstance(retina.anchor_matcher, ReferenceMatcher) and retina.anchor_matcher.min_low_quality_iou == 0.0
    bad = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "MODEL.LIBRA.RPN_MIN_POS_IOU", 1.5)
    with pytest.raises(LibraConfigError, match="MODEL.LIBRA.RPN_MIN_POS_IOU = 1.5 is invalid"):
        validate_libra_config(bad)  # the up-front check, matcher on or off
    bad.MODEL.LIBRA.REFERENCE_MATCHER = True
    with pytest.raises(LibraConfigError, match=r"ReferenceMatcher\(min_low_quality_iou=...\) \[config key MODEL.LIBRA.RPN_MIN_POS_IOU"):
        build_model(bad)
    with pytest.raises(LibraConfigError, match="min_low_quality_iou"):
        ReferenceMatcher([0.3, 0.7], [0, -1, 1], min_low_quality_iou=-0.1)
