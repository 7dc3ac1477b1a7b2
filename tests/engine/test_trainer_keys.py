"""Keys that only LibraTrainer honours (SOLVER.OPTIMIZER, SOLVER.FUSED_OPTIMIZER,
DATALOADER.EXACT_RESUME) exist only where add_libra_trainer_config added them: a config that
sets one without it stops at merge, naming LibraTrainer."""
import os

import pytest
from detectron2.config import get_cfg

import libra_d2
from libra_d2.config import TRAINER_KEYS, add_libra_trainer_config, get_libra_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILTIN = os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml")


def _model_keys_cfg():
    cfg = get_cfg()
    libra_d2.add_libra_config(cfg)
    return cfg


def test_a_trainer_key_without_the_trainer_keys_stops_at_merge_naming_libra_trainer():
    with pytest.raises(KeyError, match="SOLVER.OPTIMIZER.*LibraTrainer"):
        _model_keys_cfg().merge_from_file(BUILTIN)  # the built-in recipe asks for AdamW
    for key, value in (("SOLVER.OPTIMIZER", "AdamW"), ("SOLVER.FUSED_OPTIMIZER", "True"),
                       ("DATALOADER.EXACT_RESUME", "False")):
        with pytest.raises(KeyError, match=f"{key}.*LibraTrainer"):
            _model_keys_cfg().merge_from_list([key, value])


def test_with_the_trainer_keys_every_way_of_setting_them_works():
    cfg = get_libra_cfg(BUILTIN, ["SOLVER.FUSED_OPTIMIZER", "True", "DATALOADER.EXACT_RESUME", "False"])
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.FUSED_OPTIMIZER, cfg.DATALOADER.EXACT_RESUME) == ("AdamW", True, False)
    add_libra_trainer_config(cfg)  # idempotent: keeps the merged values
    assert cfg.SOLVER.OPTIMIZER == "AdamW" and cfg.DATALOADER.EXACT_RESUME is False
    assert get_libra_cfg(trainer=False).SOLVER.get("OPTIMIZER") is None
    assert {k for k in TRAINER_KEYS} == {"SOLVER.OPTIMIZER", "SOLVER.FUSED_OPTIMIZER", "DATALOADER.EXACT_RESUME"}


def test_libra_trainer_builds_adamw_from_the_keys_and_sgd_without_them(libra_cfg):
    import torch
    from detectron2.modeling import build_model

    from libra_d2.engine import LibraTrainer

    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml")
    model = build_model(cfg)
    assert isinstance(LibraTrainer.build_optimizer(cfg, model), torch.optim.AdamW)
    sgd = get_libra_cfg(trainer=False)
    sgd.MODEL.DEVICE = "cpu"
    assert isinstance(LibraTrainer.build_optimizer(sgd, model), torch.optim.SGD)
