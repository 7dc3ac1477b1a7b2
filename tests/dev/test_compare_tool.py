"""dev/reference/compare_with_mmdet.py: its own logic, without mmdetection (which CI does not have)."""
import os
import sys

import numpy as np
import pytest
import torch

from dev.reference.compare_with_mmdet import (
    OHEM_SAMPLER,
    box_iou,
    compare_choices,
    compare_losses,
    compare_scaled_losses,
    compare_tensors,
    main,
    match_detections,
    matching_differences,
    ohem_cases,
    parse_gt,
    second_image,
    synthetic_image,
)
from dev.reference.mmdet_reference_side import choose_by_priority


def test_detections_match_one_to_one_by_class_iou_and_score():
    ref = (np.array([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10]], np.float32),
           np.array([0.9, 0.8, 0.7]), np.array([1, 2, 3]))
    ours = (np.array([[20, 20, 40, 40.01], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32),
            np.array([0.8002, 0.9, 0.7]), np.array([2, 1, 3]))
    r = match_detections(ref, ours)
    assert r["matched"] == 3 and r["unmatched_reference"] == [] and r["max_score_diff"] < 3e-4
    # a class change, a score beyond the tolerance, a moved box: each leaves one unmatched
    changed_class = (ours[0], ours[1], np.array([2, 1, 4]))
    changed_score = (ours[0], np.array([0.8002, 0.9, 0.702]), ours[2])
    moved = ours[0].copy()
    moved[1, 0] += 3  # IoU 0.7 with the reference box
    for o in (changed_class, changed_score, (moved, ours[1], ours[2])):
        r = match_detections(ref, o)
        assert r["matched"] == 2 and len(r["unmatched_reference"]) == 1
    # one of ours may serve one reference detection only
    dup = (ref[0][[0, 0]], ref[1][[0, 0]], ref[2][[0, 0]])
    assert match_detections(dup, (ref[0][:1], ref[1][:1], ref[2][:1]))["matched"] == 1


def test_neck_and_loss_comparisons_are_relative():
    a = np.array([[1.0, -4.0], [2.0, 0.5]])
    r = compare_tensors(a, a + np.array([[0, 4e-4], [0, 0]]))
    assert r["rel"] == pytest.approx(1e-4)
    assert compare_tensors(a, a[:1])["rel"] is None  # shape mismatch is reported, not broadcast
    ref = {"loss_rpn_cls": 0.5, "loss_rpn_bbox": 0.1, "loss_cls": 2.0, "loss_bbox": 0.2, "acc": 90.0}
    ours = {"loss_rpn_cls": 0.5, "loss_rpn_loc": 0.1 * 90 / 256, "loss_cls": 2.0, "loss_box_reg": 0.2}
    c = compare_losses(ref, ours)
    assert c["loss_rpn_cls"]["rel"] == 0 and c["loss_rpn_loc"]["rel"] == pytest.approx(1 - 90 / 256)


def test_priority_draw_is_the_same_subset_on_both_sides():
    """The reference side picks from an index gallery, libra-d2 from a mask: same subset."""
    g = torch.Generator().manual_seed(1)
    priority = torch.randperm(5000, generator=g).double()
    mask = torch.rand(5000, generator=g) < 0.3
    gallery = mask.nonzero().flatten()
    chosen = choose_by_priority(gallery, 75, priority)
    assert len(chosen) == 75 and len(set(chosen.tolist())) == 75 and bool(mask[chosen].all())
    # the 75 smallest priorities among the candidates, whatever order the gallery comes in
    shuffled = gallery[torch.randperm(len(gallery), generator=g)]
    assert set(choose_by_priority(shuffled, 75, priority).tolist()) == set(chosen.tolist())
    expected = gallery[priority[gallery].argsort()[:75]]
    assert set(expected.tolist()) == set(chosen.tolist())


def test_matching_differences_are_detected():
    anchors = torch.tensor([[0, 0, 32, 32], [16, 0, 48, 32], [100, 100, 132, 132]], dtype=torch.float32)
    far = matching_differences(anchors, torch.tensor([[0.0, 0, 32, 32], [100, 100, 130, 130]]))
    assert far == {"boxes_below_min_pos_iou": [], "anchors_best_for_several_boxes": 0, "fires": False}
    small = matching_differences(anchors, torch.tensor([[0.0, 0, 8, 8]]))  # IoU 64/1024 < 0.3
    assert small["boxes_below_min_pos_iou"] == [0] and small["fires"]
    shared = matching_differences(anchors, torch.tensor([[0.0, 0, 30, 30], [2.0, 2, 32, 32]]))
    assert shared["anchors_best_for_several_boxes"] == 1 and shared["fires"]


def test_synthetic_input_and_gt_parsing():
    img, boxes, classes = synthetic_image()
    assert img.shape == (320, 416, 3) and img.dtype == np.uint8 and img.shape[0] % 32 == img.shape[1] % 32 == 0
    assert len(boxes) == len(classes) == 4
    assert img[100, 100].tolist() == [220, 40, 40]  # inside the first (red) rectangle
    assert parse_gt(["1,2,30,40,3"]) == {"boxes": [[1.0, 2.0, 30.0, 40.0]], "classes": [3]}
    for bad, msg in [("1,2,3", "expected x1,y1,x2,y2,class"), ("1,2,a,4,0", "four numbers"),
                     ("10,2,5,40,1", "empty box")]:
        with pytest.raises(SystemExit, match=msg):
            parse_gt([bad])


def test_an_interpreter_without_mmdetection_is_named(tmp_path):
    torch.save({"state_dict": {"roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 4)}}, tmp_path / "x.pth")
    with pytest.raises(SystemExit, match="cannot import mmdet"):
        main(["--mmdet-python", sys.executable, "--mmdet-config", "cfg.py", "--checkpoint", str(tmp_path / "x.pth")])


def test_the_reference_side_imports_nothing_of_libra_d2_or_detectron2():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dev", "reference", "mmdet_reference_side.py")
    src = open(path).read()
    assert "libra_d2" not in src.replace("libra-d2", "") and "detectron2" not in src


def test_retinanet_batch_inputs_and_scaled_loss_comparison():
    rgb, boxes, classes = synthetic_image()
    gt = {"boxes": boxes, "classes": classes}
    rgb2, gt2 = second_image(rgb, gt)
    assert rgb2.shape[:2] == (250, 330) and np.array_equal(rgb2, rgb[:250, :330])
    assert all(b[2] <= 330 and b[3] <= 250 for b in gt2["boxes"]) and len(gt2["boxes"]) == len(gt2["classes"]) >= 3
    ref = {"loss_cls": 1.2, "loss_bbox": 0.3}
    ours = {"loss_cls": 1.2 * 10 / 90.4, "loss_box_reg": 0.3 * 10 / 90.4}  # same sums, divisors 90.4 vs 10
    assert compare_scaled_losses(ref, ours, 1.0)["loss_cls"]["rel"] > 0.8
    scaled = compare_scaled_losses(ref, ours, 90.4 / 10)
    assert max(t["rel"] for t in scaled.values()) < 1e-12
    assert compare_scaled_losses({"loss_cls": 1.0}, ours, 1.0)["loss_box_reg"] == {"missing": "reference"}


def test_ohem_cases_cover_both_pool_sizes():
    rgb, boxes, classes = synthetic_image()
    gt = {"boxes": boxes, "classes": classes}
    cases = {c["name"]: c for c in ohem_cases(rgb.shape[:2], gt)}
    num_pos = int(OHEM_SAMPLER["num"] * OHEM_SAMPLER["pos_fraction"])
    for name, larger in (("pool_larger", True), ("pool_smaller", False)):
        props = torch.tensor(cases[name]["proposals"])
        iou = box_iou(torch.tensor(boxes, dtype=torch.float32), props).max(dim=0).values
        pos, neg = int((iou >= 0.5).sum()) + len(boxes), int((iou < 0.5).sum())  # + the appended ground truth
        if larger:
            assert pos > num_pos and neg > OHEM_SAMPLER["num"] - num_pos
        else:
            assert pos <= num_pos and pos + neg <= OHEM_SAMPLER["num"]
        assert cases[name]["mmdet_overrides"]["train_cfg.rcnn.sampler"]["type"] == "OHEMSampler"
    again = ohem_cases(rgb.shape[:2], gt)
    assert again[0]["proposals"] == cases["pool_larger"]["proposals"]  # deterministic


def test_chosen_sets_compare_exactly():
    a = {"positive": [[0, 0, 10, 10], [1, 1, 5, 5]], "negative": [[2, 2, 3, 3]]}
    same = {"positive": [[1, 1, 5, 5], [0, 0, 10, 10]], "negative": [[2, 2, 3, 3]]}
    c = compare_choices(a, same)
    assert c["positive"]["equal"] and c["negative"]["equal"] and c["positive"]["common"] == 2
    moved = {"positive": [[1, 1, 5, 5], [0, 0, 10, 10.001]], "negative": [[2, 2, 3, 3]]}
    c = compare_choices(a, moved)
    assert not c["positive"]["equal"] and c["positive"]["only_reference"] == [(0.0, 0.0, 10.0, 10.0)]
