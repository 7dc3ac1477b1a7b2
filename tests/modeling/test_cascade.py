"""LibraCascadeROIHeads: balanced first-stage sampling, Balanced L1 in every stage."""
import pytest
import torch
from detectron2.utils.events import EventStorage

from libra_d2.modeling.fast_rcnn import LibraFastRCNNOutputLayers
from tests.conftest import inputs, neg_ious, small_heads

CASCADE = ("MODEL.ROI_HEADS.NAME", "LibraCascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True)


def test_every_stage_trains_with_its_weights_and_balanced_l1(libra_cfg):
    cfg, heads = small_heads(libra_cfg, *CASCADE)
    assert type(heads).__name__ == "LibraCascadeROIHeads" and heads.num_cascade_stages == 3
    for pred, w in zip(heads.box_predictor, cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS):
        assert isinstance(pred, LibraFastRCNNOutputLayers) and pred.box_reg_loss_type == "balanced_l1"
        assert tuple(pred.box2box_transform.weights) == tuple(w)
    heads.train()
    images, features, props, targets = inputs()
    torch.manual_seed(0)
    with EventStorage() as storage:
        _, losses = heads(images, features, props, targets)
        sum(losses.values()).backward()
        latest = storage.latest()
    assert set(losses) == {f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["loss_box_reg_stage2"]) > 0
    assert "libra/neg_iou_mean" in latest  # the first stage's sample is Libra's
    # the same heads with smooth L1: different box losses, same classification losses
    _, smooth = small_heads(libra_cfg, *CASCADE, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "smooth_l1")
    smooth.load_state_dict(heads.state_dict())
    smooth.train()
    torch.manual_seed(0)
    with EventStorage():
        _, losses2 = smooth(images, features, props, targets)
    assert float(losses2["loss_cls_stage0"]) == pytest.approx(float(losses["loss_cls_stage0"]), rel=1e-6)
    assert float(losses2["loss_box_reg_stage0"]) != pytest.approx(float(losses["loss_box_reg_stage0"]), rel=1e-3)


def test_first_stage_negatives_are_iou_balanced(libra_cfg):
    for seed in range(2):
        uni = neg_ious(libra_cfg, "random", seed, "auto", *CASCADE)
        bal = neg_ious(libra_cfg, "iou_balanced", seed, "auto", *CASCADE)
        assert len(uni) == len(bal)
        mid = lambda x: int(((x >= 1 / 3) & (x < 2 / 3)).sum())  # noqa: E731
        assert mid(bal) >= len(bal) // 3 and mid(uni) < len(bal) // 6
        assert float(bal.mean()) > 2 * float(uni.mean())


def test_cascade_checkpoints_are_detectron2s(libra_cfg):
    """Same parameter names and shapes as detectron2's CascadeROIHeads (checkpoints load)."""
    _, libra = small_heads(libra_cfg, *CASCADE)
    _, stock = small_heads(libra_cfg, "MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
                           True, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "smooth_l1")
    assert {k: v.shape for k, v in libra.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
