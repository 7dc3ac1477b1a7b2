"""The RoI sampler registry: OHEM, a user's sampler from the README, and the proposal-only
RPN configs that report proposal recall."""
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage

from libra_d2.config import LibraConfigError
from libra_d2.modeling.roi_samplers import ROI_SAMPLER_REGISTRY, registered_samplers
from libra_d2.modeling.sampling import top_loss_mask
from tests.conftest import ROOT, TINY, inputs, run_train_net, small_heads


def test_top_loss_mask_takes_the_highest_losses_ties_to_the_lower_index():
    losses = torch.tensor([0.5, 2.0, 0.1, 2.0, 3.0, 2.0, 0.7, 9.0])
    candidates = torch.tensor([True, True, True, True, True, True, True, False])
    # 3.0, then two of the three 2.0 ties (indices 1 and 3, not 5); 9.0 is not a candidate
    assert top_loss_mask(losses, candidates, 3).nonzero().flatten().tolist() == [1, 3, 4]
    assert top_loss_mask(losses, candidates, torch.tensor(2)).nonzero().flatten().tolist() == [1, 4]
    assert int(top_loss_mask(losses, candidates, 100).sum()) == 7  # min(num, #candidates), as the random sampler
    assert int(top_loss_mask(losses, candidates, 0).sum()) == 0


def test_registry_lists_builtins_by_role_and_unknown_names_fail():
    assert registered_samplers("positive")[:3] == ("instance_balanced", "ohem", "random")
    assert {"iou_balanced", "ohem", "random"} <= set(registered_samplers("negative"))
    assert "instance_balanced" not in registered_samplers("negative")


def test_unknown_sampler_is_a_config_error_listing_registered_names(libra_cfg):
    with pytest.raises(LibraConfigError, match=r"POS_SAMPLER\] = 'hard' is invalid: allowed one of "
                                               r"'instance_balanced', 'ohem', 'random'"):
        small_heads(libra_cfg, "MODEL.LIBRA.POS_SAMPLER", "hard")
    with pytest.raises(LibraConfigError, match=r"NEG_SAMPLER\] = 'instance_balanced' is invalid"):
        small_heads(libra_cfg, "MODEL.LIBRA.NEG_SAMPLER", "instance_balanced")  # a positive-only sampler


def _spy_box_head(heads):
    calls = []

    def hook(module, inp, out):
        calls.append({"rows": inp[0].shape[0], "grad": torch.is_grad_enabled(), "out": out.detach(),
                      "requires_grad": out.requires_grad})

    return calls, heads.box_head.register_forward_hook(hook)


def test_ohem_scores_every_proposal_without_grad_and_takes_the_top_losses(libra_cfg):
    _, heads = small_heads(libra_cfg, "MODEL.LIBRA.POS_SAMPLER", "ohem", "MODEL.LIBRA.NEG_SAMPLER", "ohem")
    heads.train()
    images, features, props, targets = inputs(num_props=300)
    full = add_ground_truth_to_proposals(targets, props)
    calls, handle = _spy_box_head(heads)
    sampled = {}
    forward_box = heads._forward_box

    def spy_forward_box(feats, proposals):
        sampled["proposals"] = proposals
        return forward_box(feats, proposals)

    heads._forward_box = spy_forward_box
    with EventStorage():
        _, losses = heads(images, features, props, targets)
    handle.remove()
    # 1) every proposal of every image (with the appended ground truth) through the box head, no grad
    assert calls[0]["rows"] == sum(len(p) for p in full) and not calls[0]["grad"] and not calls[0]["requires_grad"]
    # 2) then the box head trains, with grad, on the sample only (so only it carries gradient)
    assert len(calls) == 2 and calls[1]["grad"] and calls[1]["requires_grad"]
    assert calls[1]["rows"] == sum(len(p) for p in sampled["proposals"])
    # 3) the sample is a top-k of the classification loss computed here
    with torch.no_grad():
        scores = heads.box_predictor(calls[0]["out"])[0]
    offset = 0
    for img, (p, t, got) in enumerate(zip(full, targets, sampled["proposals"])):
        n = len(p)
        if len(t):
            matched, labels = heads.proposal_matcher(pairwise_iou(t.gt_boxes, p.proposal_boxes))
            cls = t.gt_classes[matched].clone()
            cls[labels == 0] = heads.num_classes
            cls[labels == -1] = -1
        else:
            cls = torch.full((n,), heads.num_classes, dtype=torch.long)
        loss = F.cross_entropy(scores[offset:offset + n], cls.clamp(min=0), reduction="none").tolist()
        offset += n
        pos = [i for i in range(n) if 0 <= cls[i] < heads.num_classes]
        neg = [i for i in range(n) if cls[i] == heads.num_classes]
        n_pos = min(len(pos), int(heads.batch_size_per_image * heads.positive_fraction))
        n_neg = min(len(neg), heads.batch_size_per_image - n_pos)
        by_loss = lambda idx: sorted(idx, key=lambda i: (-loss[i], i))  # noqa: E731
        expected = sorted(by_loss(pos)[:n_pos] + by_loss(neg)[:n_neg])
        assert torch.equal(got.proposal_boxes.tensor, p.proposal_boxes.tensor[expected]), f"image {img}"
        assert int((got.gt_classes != heads.num_classes).sum()) == n_pos
    assert all(torch.isfinite(v) for v in losses.values())


def test_ohem_in_a_cascade_scores_with_the_first_stage(libra_cfg):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_roi_heads

    cfg = libra_cfg("builtin/libra_cascade_rcnn_R_18_FPN_cpu.yaml", "MODEL.LIBRA.POS_SAMPLER", "ohem",
                    "MODEL.LIBRA.NEG_SAMPLER", "ohem", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
                    "MODEL.FPN.OUT_CHANNELS", 16, "SOLVER.OPTIMIZER", "SGD")
    heads = build_roi_heads(cfg, {f"p{i}": ShapeSpec(channels=16, stride=2 ** i) for i in range(2, 7)})
    heads.train()
    images, features, props, targets = inputs(num_props=200)
    rows = []
    handle = heads.box_head[0].register_forward_hook(lambda m, i, o: rows.append((i[0].shape[0], torch.is_grad_enabled())))
    with EventStorage():
        _, losses = heads(images, features, props, targets)
    handle.remove()
    assert rows[0] == (sum(len(p) for p in add_ground_truth_to_proposals(targets, props)), False)
    assert rows[1][1] and rows[1][0] == 2 * 64
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------- a user's own sampler
def readme_sampler_snippet():
    """The README's user-sampler example, verbatim."""
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "ROI_SAMPLER_REGISTRY.register()" in b]
    assert len(blocks) == 1, "the README shows one user sampler"
    return blocks[0]


@pytest.fixture(scope="module")
def user_sampler():
    source = readme_sampler_snippet()
    assert len(source.strip().splitlines()) <= 16
    namespace = {}
    exec(compile(source, "README.md", "exec"), namespace)  # registers it, as the user's own module would
    names = [n for n, _ in ROI_SAMPLER_REGISTRY if n in namespace]
    assert len(names) == 1
    yield names[0]
    ROI_SAMPLER_REGISTRY._obj_map.pop(names[0])


def test_readme_user_sampler_changes_which_rois_a_head_samples(libra_cfg, user_sampler):
    assert user_sampler in registered_samplers("negative")
    picked = {}
    for name in ("iou_balanced", user_sampler):
        _, heads = small_heads(libra_cfg, "MODEL.LIBRA.NEG_SAMPLER", name)
        heads.train()
        _, _, props, targets = inputs()
        torch.manual_seed(0)
        with EventStorage():
            out = heads.label_and_sample_proposals(props, targets)
        bg = out[0].gt_classes == heads.num_classes
        picked[name] = out[0].proposal_boxes.tensor[bg]
        iou = pairwise_iou(targets[0].gt_boxes, out[0].proposal_boxes).max(dim=0).values[bg]
        picked[name + "_iou"] = iou
    assert picked["iou_balanced"].shape == picked[user_sampler].shape  # same count
    assert not torch.equal(picked["iou_balanced"], picked[user_sampler])
    # the README's sampler takes the negatives closest to the boxes: no harder negative was left out
    _, heads = small_heads(libra_cfg)
    full = add_ground_truth_to_proposals(targets, props)[0]
    iou_all = pairwise_iou(targets[0].gt_boxes, full.proposal_boxes).max(dim=0).values
    negatives = iou_all[iou_all < heads.proposal_matcher.thresholds[1]]
    k = len(picked[user_sampler + "_iou"])
    assert torch.allclose(picked[user_sampler + "_iou"].sort(descending=True).values, negatives.topk(k).values)


def test_readme_user_sampler_trains(shapes_root, libra_cfg, tmp_path, user_sampler):
    from libra_d2.engine import LibraTrainer

    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "MODEL.LIBRA.NEG_SAMPLER", user_sampler,
                    "SOLVER.MAX_ITER", 3, "OUTPUT_DIR", str(tmp_path), *TINY, "TEST.EVAL_PERIOD", 0)
    cfg.DATASETS.TEST = ()
    trainer = LibraTrainer(cfg)
    trainer.train()
    assert trainer.iter == 3 and trainer.model.roi_heads.neg_sampler == user_sampler
    assert os.path.isfile(tmp_path / "model_final.pth")


# ---------------------------------------------------------------- proposal-only RPN configs
@pytest.mark.parametrize("config", ["rpn_R_18_FPN_cpu.yaml", "libra_rpn_R_18_FPN_cpu.yaml"])
def test_proposal_only_configs_train_and_report_proposal_recall(shapes_root, tmp_path, config):
    out = str(tmp_path / "run")
    run_train_net(shapes_root, "--config-file", os.path.join(ROOT, "configs/builtin", config), *TINY,
                  "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", out)
    with open(os.path.join(out, "eval_results.json")) as f:
        res = json.load(f)
    ar = res["box_proposals"]
    assert {"AR@100", "AR@1000", "ARs@100", "ARm@100", "ARl@100"} <= set(ar)
    assert 0 <= ar["AR@100"] <= ar["AR@1000"] <= 100
    with open(os.path.join(out, "config.yaml")) as f:
        text = f.read()
    assert "POST_NMS_TOPK_TEST: 1000" in text and "ProposalNetwork" in text
