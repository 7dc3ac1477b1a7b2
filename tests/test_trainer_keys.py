"""The guard for keys only LibraTrainer honours (SOLVER.OPTIMIZER, SOLVER.FUSED_OPTIMIZER)."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from libra_d2.config import LibraConfigError
from libra_d2.engine.trainer_keys import release_trainer_guards, trainer_only_settings


def _batch():
    from detectron2.structures import Boxes, Instances

    inst = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 10, 60, 70]])), gt_classes=torch.tensor([1]))
    return [{"image": torch.rand(3, 96, 128) * 255, "instances": inst}]


def test_guard_stops_a_training_step_unless_the_optimizer_honours_the_keys(libra_cfg):
    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml")
    assert trainer_only_settings(cfg) == ["SOLVER.OPTIMIZER = 'AdamW'"]
    model = build_model(cfg)
    model.eval()
    with torch.no_grad():
        model([{"image": torch.rand(3, 96, 128) * 255}])  # inference: unaffected
    model.train()
    with torch.no_grad(), EventStorage():
        model(_batch())  # loss evaluation without gradients: unaffected
    with pytest.raises(LibraConfigError, match="SOLVER.OPTIMIZER = 'AdamW'.*LibraTrainer"), EventStorage():
        model(_batch())
    # LibraTrainer's optimizer builder honours the key, so it releases the guard
    from libra_d2.training import LibraTrainer

    opt = LibraTrainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    with EventStorage():
        sum(model(_batch()).values()).backward()


def test_no_guard_for_sgd_and_explicit_release(libra_cfg):
    sgd = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "SOLVER.OPTIMIZER", "SGD")
    assert trainer_only_settings(sgd) == []
    model = build_model(sgd).train()
    with EventStorage():
        model(_batch())
    retina = build_model(libra_cfg("builtin/libra_retinanet_R_18_FPN_cpu.yaml")).train()
    with pytest.raises(LibraConfigError), EventStorage():
        retina(_batch())
    release_trainer_guards(retina)
    with EventStorage():
        retina(_batch())
