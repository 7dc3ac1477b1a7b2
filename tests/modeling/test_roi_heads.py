"""LibraROIHeads in a small model, following detectron2's test_roi_heads pattern."""
import pytest
import torch
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from tests.conftest import inputs, neg_ious, small_heads  # noqa: E402


@pytest.mark.parametrize("method", ["numpy", "torch"])
@pytest.mark.parametrize("loss_type", ["balanced_l1", "smooth_l1"])
def test_losses_finite_with_and_without_gt(libra_cfg, loss_type, method):
    _, heads = small_heads(libra_cfg, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", loss_type)
    heads.sampler_method = method
    heads.train()
    images, features, props, targets = inputs()
    with EventStorage() as storage:
        _, losses = heads(images, features, props, targets)
        sum(losses.values()).backward()
        latest = storage.latest()
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert latest["roi_head/num_fg_samples"][0] + latest["roi_head/num_bg_samples"][0] == 64  # batch filled
    assert float(losses["loss_box_reg"]) > 0
    assert "libra/neg_iou_mean" in latest and "libra/neg_share_bin0" in latest
    # only-empty batch: still finite
    with EventStorage():
        _, losses = heads(images, features, props, [targets[1], targets[1]])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("method", ["numpy", "torch"])
def test_iou_balanced_negatives_shift_the_histogram(libra_cfg, method):
    for seed in range(3):
        uni = neg_ious(libra_cfg, "random", seed)
        bal = neg_ious(libra_cfg, "iou_balanced", seed, method)
        assert len(uni) == len(bal)
        # The gt box is appended as a proposal, so the bins are [0, 1/3), [1/3, 2/3),
        # [2/3, 1): bin 1 gets its full quota (num_neg // 3), the empty top bin's quota
        # becomes uniform filler. Uniform sampling mirrors the pool (~90% IoU zero).
        quota = len(bal) // 3
        mid = lambda x: int(((x >= 1 / 3) & (x < 2 / 3)).sum())  # noqa: E731
        assert mid(bal) >= quota
        assert mid(uni) < quota / 2
        assert float((uni > 0).float().mean()) < 0.3
        assert float(bal.mean()) > 2 * float(uni.mean())


def test_uniform_fallback_is_detectron2_sampling(libra_cfg):
    _, heads = small_heads(libra_cfg, "MODEL.LIBRA.NEG_SAMPLER", "random", "MODEL.LIBRA.POS_SAMPLER", "random")
    from detectron2.modeling.roi_heads import StandardROIHeads

    images, features, props, targets = inputs()
    with EventStorage():
        torch.manual_seed(3)
        a = heads.label_and_sample_proposals(props, targets)
        torch.manual_seed(3)
        b = StandardROIHeads.label_and_sample_proposals(heads, props, targets)
    for x, y in zip(a, b):
        assert torch.equal(x.proposal_boxes.tensor, y.proposal_boxes.tensor)
        assert torch.equal(x.gt_classes, y.gt_classes)


def degenerate_case(heads_cfg, num_props, gt_boxes, gt_classes, h=256, w=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {f"p{i}": torch.rand(1, 16, h // 2 ** i, w // 2 ** i, generator=g) for i in range(2, 7)}
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    xy = torch.rand(num_props, 2, generator=g) * (w - 40)
    boxes = torch.cat([xy, xy + 8 + torch.rand(num_props, 2, generator=g) * 30], 1)
    props = [Instances((h, w), proposal_boxes=Boxes(boxes), objectness_logits=torch.rand(num_props, generator=g))]
    gt = [Instances((h, w), gt_boxes=Boxes(gt_boxes), gt_classes=gt_classes)]
    return images, features, props, gt


@pytest.mark.parametrize(
    "case",
    ["all_negative", "fewer_proposals_than_batch", "one_class", "thousand_boxes", "no_proposals_no_gt"],
)
def test_degenerate_inputs_give_finite_losses(libra_cfg, case):
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", 1] if case == "one_class" else []
    _, heads = small_heads(libra_cfg, *opts)
    heads.train()
    g = torch.Generator().manual_seed(1)
    if case == "all_negative":  # ground truth far from every proposal; gt not appended
        heads.proposal_append_gt = False
        args = degenerate_case(heads, 300, torch.tensor([[240.0, 240, 255, 255]]), torch.tensor([0]))
    elif case == "fewer_proposals_than_batch":
        args = degenerate_case(heads, 10, torch.tensor([[10.0, 10, 40, 40]]), torch.tensor([2]))
    elif case == "one_class":
        args = degenerate_case(heads, 200, torch.tensor([[10.0, 10, 40, 40], [50, 50, 120, 100]]), torch.tensor([0, 0]))
    elif case == "thousand_boxes":
        xy = torch.rand(1000, 2, generator=g) * 220
        gtb = torch.cat([xy, xy + 4 + torch.rand(1000, 2, generator=g) * 30], 1)
        args = degenerate_case(heads, 2000, gtb, torch.randint(0, 4, (1000,), generator=g))
    else:
        args = degenerate_case(heads, 0, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with EventStorage():
        _, losses = heads(*args)
    assert all(torch.isfinite(v) for v in losses.values()), losses
