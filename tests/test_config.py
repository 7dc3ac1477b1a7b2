import re

import pytest
from detectron2.modeling import build_model

from libra_d2.config import LibraConfigError, validate_libra_config

# (key, bad value, message of the up-front check, config whose model reads the key)
RCNN = "builtin/libra_rcnn_R_18_FPN_cpu.yaml"
RETINA = "builtin/libra_retinanet_R_18_FPN_cpu.yaml"
BAD = [
    ("MODEL.LIBRA.FLOOR_FRACTION", 1.5, r"MODEL.LIBRA.FLOOR_FRACTION = 1.5 is invalid: allowed \[0.0, 1.0\]", RCNN),
    ("MODEL.LIBRA.FLOOR_THRESH", -0.5, "MODEL.LIBRA.FLOOR_THRESH = -0.5", RCNN),
    ("MODEL.LIBRA.NUM_BINS", 0, "MODEL.LIBRA.NUM_BINS = 0", RCNN),
    ("MODEL.LIBRA.NEG_BIN_UPPER", "one", "MODEL.LIBRA.NEG_BIN_UPPER = 'one'", RCNN),
    ("MODEL.LIBRA.BALANCED_L1.BETA", 0.0, r"MODEL.LIBRA.BALANCED_L1.BETA = 0.0 is invalid: allowed \(0.0, inf\]", RCNN),
    ("MODEL.LIBRA.BALANCED_L1.ALPHA", -1.0, "MODEL.LIBRA.BALANCED_L1.ALPHA = -1.0", RCNN),
    ("MODEL.LIBRA.RETINANET_BALANCED_L1.GAMMA", 0.0, "MODEL.LIBRA.RETINANET_BALANCED_L1.GAMMA = 0.0", RETINA),
    ("MODEL.LIBRA.RPN_NEG_POS_UB", -3.0, "MODEL.LIBRA.RPN_NEG_POS_UB = -3.0", RCNN),
    ("MODEL.BFP.REFINE_TYPE", "attention", "MODEL.BFP.REFINE_TYPE = 'attention'", RCNN),
    ("MODEL.BFP.REFINE_LEVEL", -1, r"MODEL.BFP.REFINE_LEVEL = -1 is invalid: allowed \[0, inf\]", RCNN),
]


def test_defaults_are_valid(libra_cfg):
    cfg = libra_cfg()
    validate_libra_config(cfg)
    assert cfg.MODEL.LIBRA.NUM_BINS == 3 and cfg.MODEL.BFP.REFINE_LEVEL == 2


@pytest.mark.parametrize("key,value,message,config", BAD)
def test_bad_values_name_key_value_and_range(libra_cfg, key, value, message, config):
    """The up-front check names the key; building the model (what a script of one's own
    does) fails in the constructor that reads the value, naming its argument and the key."""
    cfg = libra_cfg(config, key, value)
    with pytest.raises(LibraConfigError, match=message):
        validate_libra_config(cfg)
    in_constructor = r"\([^)]+=\.\.\.\) \[config key " + message.replace(" = ", r"\] = ", 1)
    with pytest.raises(LibraConfigError, match=in_constructor):
        build_model(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("MODEL.LIBRA.NEG_SAMPLER", "hardest",
     "MODEL.LIBRA.NEG_SAMPLER] = 'hardest' is invalid: allowed one of 'iou_balanced', 'ohem', 'random'"),
    ("MODEL.LIBRA.POS_SAMPLER", "balanced", "MODEL.LIBRA.POS_SAMPLER] = 'balanced'"),
])
def test_unregistered_sampler_names_stop_the_build_naming_the_registered_ones(libra_cfg, key, value, message):
    """Sampler names are checked against the sampler registry (a model concept) by the box
    head's constructor, which LibraTrainer.build_model runs right after the up-front check."""
    cfg = libra_cfg(RCNN, key, value)
    validate_libra_config(cfg)
    with pytest.raises(LibraConfigError, match=re.escape(message)):
        build_model(cfg)


def test_refine_level_outside_pyramid(libra_cfg):
    cfg = libra_cfg("Base-Libra-RCNN-FPN.yaml", "MODEL.BFP.REFINE_LEVEL", 5)
    validate_libra_config(cfg)  # the number of levels is the backbone's to know
    with pytest.raises(LibraConfigError, match=r"MODEL.BFP.REFINE_LEVEL\] = 5 is invalid: allowed 0..4"):
        build_model(cfg)


def test_bg_thresh_upper_needs_room(libra_cfg):
    cfg = libra_cfg("Base-Libra-RCNN-FPN.yaml", "MODEL.LIBRA.NEG_BIN_UPPER", "bg_thresh", "MODEL.LIBRA.FLOOR_THRESH", 0.6)
    with pytest.raises(LibraConfigError, match="NEG_BIN_UPPER"):
        validate_libra_config(cfg)


def test_missing_keys_explained():
    from detectron2.config import get_cfg

    with pytest.raises(LibraConfigError, match="add_libra_config"):
        validate_libra_config(get_cfg())


def test_balanced_l1_with_a_head_that_does_not_know_it_is_rejected(libra_cfg):
    import libra_d2
    from libra_d2.config import LibraConfigError

    cfg = libra_cfg("builtin/faster_rcnn_R_18_FPN_cpu.yaml", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1")
    with pytest.raises(LibraConfigError, match="MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = 'balanced_l1'.*LibraROIHeads.*StandardROIHeads"):
        libra_d2.validate_libra_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "LibraROIHeads"
    libra_d2.validate_libra_config(cfg)
    cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "balanced_l1"
    with pytest.raises(LibraConfigError, match="MODEL.RPN.BBOX_REG_LOSS_TYPE.*LibraRPN"):
        libra_d2.validate_libra_config(cfg)


def test_solver_optimizer_choice(libra_cfg):
    import torch

    import libra_d2
    from libra_d2.config import LibraConfigError
    from libra_d2.engine import LibraTrainer

    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml")
    model = build_model(cfg)
    assert cfg.SOLVER.OPTIMIZER == "AdamW"
    opt = LibraTrainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    cfg.SOLVER.OPTIMIZER = "SGD"
    opt = LibraTrainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == cfg.SOLVER.MOMENTUM
    cfg.SOLVER.OPTIMIZER = "Adam"
    with pytest.raises(LibraConfigError, match="SOLVER.OPTIMIZER = 'Adam' is invalid: allowed one of 'SGD', 'AdamW'"):
        libra_d2.validate_libra_config(cfg)


def test_fused_adamw_option_same_update_up_to_rounding(libra_cfg):
    """SOLVER.FUSED_OPTIMIZER builds torch's fused AdamW (with detectron2's clipping); its
    steps match the unfused optimizer's to float rounding; with SGD it is a config error."""
    import copy

    import torch

    import libra_d2
    from libra_d2.config import LibraConfigError
    from libra_d2.engine import LibraTrainer

    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml")
    assert cfg.SOLVER.FUSED_OPTIMIZER is False
    torch.manual_seed(0)
    model = build_model(cfg)
    start = copy.deepcopy(model)
    twin = copy.deepcopy(model)
    plain = LibraTrainer.build_optimizer(cfg, model)
    assert not plain.defaults.get("fused")
    cfg.SOLVER.FUSED_OPTIMIZER = True
    libra_d2.validate_libra_config(cfg)
    fused = LibraTrainer.build_optimizer(cfg, twin)
    assert fused.defaults["fused"] is True
    for step in range(3):
        for opt, m in ((plain, model), (fused, twin)):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 * step + i)) * 0.1
            opt.step()
    for (n, p), q, p0 in zip(model.named_parameters(), twin.parameters(), start.parameters()):
        assert not torch.equal(p, p0), n  # the steps moved every parameter
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=n)
    cfg.SOLVER.OPTIMIZER = "SGD"
    with pytest.raises(LibraConfigError, match="SOLVER.FUSED_OPTIMIZER = True is invalid"):
        libra_d2.validate_libra_config(cfg)
