"""Config keys added by libra-d2, with defaults, and their validation.

The model keys live under ``MODEL.LIBRA`` and ``MODEL.BFP``; ``SOLVER.OPTIMIZER``,
``SOLVER.FUSED_OPTIMIZER`` and ``DATALOADER.EXACT_RESUME`` are read by ``LibraTrainer``. "balanced_l1" becomes a valid value
of ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE``, ``MODEL.RPN.BBOX_REG_LOSS_TYPE`` and
``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` for the libra-d2 components.
"""
from detectron2.config import CfgNode as CN

__all__ = [
    "add_libra_config", "validate_libra_config", "split_balanced_l1", "LibraConfigError", "check_choice", "check_number",
    "validate_sampler_args", "validate_balanced_l1_args", "check_neg_pos_ub", "REFINE_TYPES",
]

POS_SAMPLERS = ("instance_balanced", "random")
NEG_SAMPLERS = ("iou_balanced", "random")
NEG_BIN_UPPERS = ("max_iou", "bg_thresh")
REFINE_TYPES = ("non_local", "conv", "none")
OPTIMIZERS = ("SGD", "AdamW")


class LibraConfigError(ValueError):
    """A libra-d2 config value is out of range. The message names key, value and range."""


def add_libra_config(cfg):
    """Add every libra-d2 key with its default to ``cfg`` (a detectron2 CfgNode), in place."""
    _C = cfg
    _C.MODEL.LIBRA = CN()
    # Positive sampler of the box head: "instance_balanced" (equal quota per ground-truth
    # box) or "random" (detectron2's uniform sampling).
    _C.MODEL.LIBRA.POS_SAMPLER = "instance_balanced"
    # Negative sampler of the box head: "iou_balanced" (equal quota per IoU bin) or "random".
    _C.MODEL.LIBRA.NEG_SAMPLER = "iou_balanced"
    # Negatives with max IoU below this value form the "floor" set, sampled apart.
    # -1: no floor set, the bins start at 0. 0: IoU == 0 negatives are the floor set.
    _C.MODEL.LIBRA.FLOOR_THRESH = -1.0
    # Share of the negatives drawn from the floor set, in [0, 1].
    _C.MODEL.LIBRA.FLOOR_FRACTION = 0.0
    # Number of equal IoU bins for the negatives (>= 1).
    _C.MODEL.LIBRA.NUM_BINS = 3
    # Top edge of the bins: "max_iou" (largest IoU of any proposal of the image: the
    # reference implementation) or "bg_thresh" (ROI_HEADS.IOU_THRESHOLDS[0]: the paper).
    _C.MODEL.LIBRA.NEG_BIN_UPPER = "max_iou"
    # Balanced L1 loss parameters for the box head (alpha, gamma, beta > 0).
    _C.MODEL.LIBRA.BALANCED_L1 = CN()
    _C.MODEL.LIBRA.BALANCED_L1.ALPHA = 0.5
    _C.MODEL.LIBRA.BALANCED_L1.GAMMA = 1.5
    _C.MODEL.LIBRA.BALANCED_L1.BETA = 1.0
    # Balanced L1 parameters for the RPN when MODEL.RPN.BBOX_REG_LOSS_TYPE is "balanced_l1".
    _C.MODEL.LIBRA.RPN_BALANCED_L1 = CN()
    _C.MODEL.LIBRA.RPN_BALANCED_L1.ALPHA = 0.5
    _C.MODEL.LIBRA.RPN_BALANCED_L1.GAMMA = 1.5
    _C.MODEL.LIBRA.RPN_BALANCED_L1.BETA = 1.0
    # Balanced L1 parameters for RetinaNet (the reference uses beta 0.11).
    _C.MODEL.LIBRA.RETINANET_BALANCED_L1 = CN()
    _C.MODEL.LIBRA.RETINANET_BALANCED_L1.ALPHA = 0.5
    _C.MODEL.LIBRA.RETINANET_BALANCED_L1.GAMMA = 1.5
    _C.MODEL.LIBRA.RETINANET_BALANCED_L1.BETA = 0.11
    # LibraRPN: at most this many negative anchors per positive anchor of an image
    # (max(1, #positives) * UB). -1 disables the cap (detectron2's behaviour).
    _C.MODEL.LIBRA.RPN_NEG_POS_UB = -1.0

    # RetinaNet FPN top block: True = detectron2's LastLevelP6P7 (P7 = conv(relu(P6)));
    # False = the reference implementation's (P7 = conv(P6), no ReLU). Used by the libra-d2
    # RetinaNet backbones; converted reference checkpoints set False.
    _C.MODEL.LIBRA.P7_RELU = True
    # LibraRetinaNet: clip each level's decoded boxes to the image before class-wise NMS (the
    # reference's order). False: detectron2's order (NMS, then clip in post-processing).
    _C.MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS = False
    # Anchor matching of LibraRPN and LibraRetinaNet. False: detectron2's Matcher. True: the
    # reference's low-quality rule (libra_d2.matcher.ReferenceMatcher): an anchor that is a
    # box's best match becomes positive only at IoU >= the MIN_POS_IOU below, and goes to the
    # last such box. The reference's values: 0.3 for the RPN, 0.0 for RetinaNet.
    _C.MODEL.LIBRA.REFERENCE_MATCHER = False
    _C.MODEL.LIBRA.RPN_MIN_POS_IOU = 0.3
    _C.MODEL.LIBRA.RETINANET_MIN_POS_IOU = 0.0

    # Optimizer built by LibraTrainer: "SGD" (detectron2's: MOMENTUM, NESTEROV) or "AdamW"
    # (torch's, with SOLVER.WEIGHT_DECAY as its decoupled weight decay). Both use detectron2's
    # parameter groups (WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, ...) and SOLVER.CLIP_GRADIENTS.
    _C.SOLVER.OPTIMIZER = "SGD"
    # AdamW only: torch's fused kernel (one pass per parameter; on a 2-core CPU the step of the
    # built-in model takes a third of the time). The same update up to float rounding, so a
    # run with it follows another trajectory than one without, as a change of thread count does.
    _C.SOLVER.FUSED_OPTIMIZER = False

    # Training stream addressed by position with per-sample seeds, so --resume continues
    # exactly (libra_d2.training.LibraTrainer). False: detectron2's own train loader.
    _C.DATALOADER.EXACT_RESUME = True

    _C.MODEL.BFP = CN()
    # Pyramid level (index into the FPN outputs) the levels are gathered to: 2 = p4 of
    # p2..p6. Libra RetinaNet configs (p3..p7) set 1, which is p4 there as well.
    _C.MODEL.BFP.REFINE_LEVEL = 2
    # Refinement of the balanced feature: "non_local", "conv" or "none".
    _C.MODEL.BFP.REFINE_TYPE = "non_local"
    return cfg


def _fail(key, value, allowed):
    raise LibraConfigError(f"{key} = {value!r} is invalid: allowed {allowed}")


def check_choice(key, value, choices):
    """Raise :class:`LibraConfigError` naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        _fail(key, value, "one of " + ", ".join(repr(c) for c in choices))


def check_number(key, value, lo=None, hi=None, lo_open=False, integer=False):
    """Raise :class:`LibraConfigError` naming ``key`` unless ``value`` is a number in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, value, "a number")
    if integer and int(value) != value:
        _fail(key, value, "an integer")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and value > hi
    if bad_lo or bad_hi or value != value:
        left = "(" if lo_open else "["
        _fail(key, value, f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")


def check_neg_pos_ub(key, value):
    """The RPN negative cap: -1 (off) or a number >= 0."""
    check_number(key, value, lo=-1.0)
    if value != -1 and value < 0:
        _fail(key, value, "-1 (off) or a value >= 0")


def _check_choice(cfg, key, choices):
    check_choice(key, _get(cfg, key), choices)


def _check_number(cfg, key, **kw):
    check_number(key, _get(cfg, key), **kw)


def _arg_key(owner, arg, yacs_key):
    return f"{owner}({arg}=...) [config key {yacs_key}]"


def validate_sampler_args(owner, pos_sampler, neg_sampler, floor_thresh, floor_fraction, num_bins, neg_bin_upper,
                          bg_iou_thresh):
    """The checks of :func:`validate_libra_config` on the sampler arguments of a component
    built directly (LazyConfig, Python), with the same messages; ``owner`` names it."""
    k = lambda arg, key: _arg_key(owner, arg, f"MODEL.LIBRA.{key}")  # noqa: E731
    check_choice(k("pos_sampler", "POS_SAMPLER"), pos_sampler, POS_SAMPLERS)
    check_choice(k("neg_sampler", "NEG_SAMPLER"), neg_sampler, NEG_SAMPLERS)
    check_number(k("floor_thresh", "FLOOR_THRESH"), floor_thresh, lo=-1.0, hi=1.0)
    if floor_thresh != -1 and floor_thresh < 0:
        _fail(k("floor_thresh", "FLOOR_THRESH"), floor_thresh, "-1 (no floor set) or a value in [0, 1]")
    check_number(k("floor_fraction", "FLOOR_FRACTION"), floor_fraction, lo=0.0, hi=1.0)
    check_number(k("num_bins", "NUM_BINS"), num_bins, lo=1, integer=True)
    check_choice(k("neg_bin_upper", "NEG_BIN_UPPER"), neg_bin_upper, NEG_BIN_UPPERS)
    if neg_bin_upper == "bg_thresh" and bg_iou_thresh <= max(float(floor_thresh), 0.0):
        _fail(k("neg_bin_upper", "NEG_BIN_UPPER"), "bg_thresh",
              f"only when the background IoU threshold ({bg_iou_thresh}) > the bins' lower edge "
              f"max(FLOOR_THRESH, 0) ({max(float(floor_thresh), 0.0)})")


def validate_balanced_l1_args(owner, arg, params, yacs_node):
    """Balanced L1 parameters (dict alpha/gamma/beta, or None) of a directly built component."""
    if params is None:
        return
    for name in ("alpha", "gamma", "beta"):
        check_number(_arg_key(owner, f"{arg}[{name!r}]" if arg else f"balanced_l1_{name}",
                              f"MODEL.LIBRA.{yacs_node}.{name.upper()}"), params.get(name), lo=0.0, lo_open=True)


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            raise LibraConfigError(
                f"{key} is missing from the config: call libra_d2.add_libra_config(cfg) "
                "before merging a libra-d2 config file"
            )
        node = node[part]
    return node


def validate_libra_config(cfg):
    """Check every libra-d2 key; raise :class:`LibraConfigError` naming key, value and range.

    Called when a libra-d2 component is built, and by train_net.py before training.
    """
    _check_choice(cfg, "MODEL.LIBRA.POS_SAMPLER", POS_SAMPLERS)
    _check_choice(cfg, "MODEL.LIBRA.NEG_SAMPLER", NEG_SAMPLERS)
    ft = _get(cfg, "MODEL.LIBRA.FLOOR_THRESH")
    _check_number(cfg, "MODEL.LIBRA.FLOOR_THRESH", lo=-1.0, hi=1.0)
    if ft != -1 and ft < 0:
        _fail("MODEL.LIBRA.FLOOR_THRESH", ft, "-1 (no floor set) or a value in [0, 1]")
    _check_number(cfg, "MODEL.LIBRA.FLOOR_FRACTION", lo=0.0, hi=1.0)
    _check_number(cfg, "MODEL.LIBRA.NUM_BINS", lo=1, integer=True)
    _check_choice(cfg, "MODEL.LIBRA.NEG_BIN_UPPER", NEG_BIN_UPPERS)
    for node in ("BALANCED_L1", "RPN_BALANCED_L1", "RETINANET_BALANCED_L1"):
        for p in ("ALPHA", "GAMMA", "BETA"):
            _check_number(cfg, f"MODEL.LIBRA.{node}.{p}", lo=0.0, lo_open=True)
    check_neg_pos_ub("MODEL.LIBRA.RPN_NEG_POS_UB", _get(cfg, "MODEL.LIBRA.RPN_NEG_POS_UB"))
    _check_number(cfg, "MODEL.BFP.REFINE_LEVEL", lo=0, integer=True)
    _check_choice(cfg, "MODEL.BFP.REFINE_TYPE", REFINE_TYPES)
    _check_choice(cfg, "SOLVER.OPTIMIZER", OPTIMIZERS)
    fused = _get(cfg, "SOLVER.FUSED_OPTIMIZER")
    if not isinstance(fused, bool):
        _fail("SOLVER.FUSED_OPTIMIZER", fused, "True or False")
    if fused and _get(cfg, "SOLVER.OPTIMIZER") != "AdamW":
        _fail("SOLVER.FUSED_OPTIMIZER", fused, "False unless SOLVER.OPTIMIZER is 'AdamW' (the fused kernel is AdamW's)")
    for key in ("MODEL.LIBRA.RPN_MIN_POS_IOU", "MODEL.LIBRA.RETINANET_MIN_POS_IOU"):
        _check_number(cfg, key, lo=0.0, hi=1.0)
    for key in ("MODEL.LIBRA.P7_RELU", "MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS", "MODEL.LIBRA.REFERENCE_MATCHER"):
        if not isinstance(_get(cfg, key), bool):
            _fail(key, _get(cfg, key), "True or False")
    _check_balanced_l1_owners(cfg)
    if cfg.MODEL.LIBRA.NEG_BIN_UPPER == "bg_thresh":
        bg = cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]
        lo = max(float(cfg.MODEL.LIBRA.FLOOR_THRESH), 0.0)
        if bg <= lo:
            _fail(
                "MODEL.LIBRA.NEG_BIN_UPPER",
                "bg_thresh",
                f"only when ROI_HEADS.IOU_THRESHOLDS[0] ({bg}) > the bins' lower edge "
                f"max(FLOOR_THRESH, 0) ({lo})",
            )
    return cfg


def _check_balanced_l1_owners(cfg):
    """ "balanced_l1" is a libra-d2 loss type: only libra-d2's components (or subclasses)
    know it. With detectron2's own head it would fail at the first loss computation with
    "Invalid bbox reg loss type"; say which component to use instead, before training."""
    from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY

    owners = (
        ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "MODEL.ROI_HEADS.NAME", ROI_HEADS_REGISTRY,
         ("LibraROIHeads", "LibraCascadeROIHeads")),
        ("MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.PROPOSAL_GENERATOR.NAME", PROPOSAL_GENERATOR_REGISTRY, ("LibraRPN",)),
        ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "MODEL.META_ARCHITECTURE", META_ARCH_REGISTRY, ("LibraRetinaNet",)),
    )
    for loss_key, name_key, registry, libra_names in owners:
        if _get(cfg, loss_key) != "balanced_l1":
            continue
        name = _get(cfg, name_key)
        try:
            cls, libra_classes = registry.get(name), tuple(registry.get(n) for n in libra_names)
        except KeyError:  # unknown names are detectron2's own error to report
            continue
        if not (isinstance(cls, type) and issubclass(cls, libra_classes)):
            libra_name = " or ".join(repr(n) for n in libra_names)
            _fail(loss_key, "balanced_l1", f"with {name_key} = {libra_name} (or a subclass), not {name!r}; "
                  "for Balanced L1 alone on the box head, use LibraROIHeads with MODEL.LIBRA.POS_SAMPLER and "
                  "NEG_SAMPLER 'random'")


def split_balanced_l1(cfg, section, params_node):
    """For a detectron2 head whose own loss code does not know "balanced_l1" (RPN, RETINANET):

    returns ``(parent_cfg, params)``. When ``MODEL.<section>.BBOX_REG_LOSS_TYPE`` is
    "balanced_l1", ``parent_cfg`` is a copy set to "smooth_l1" (the parent computes that
    part, which the libra subclass then replaces) and ``params`` the dict(alpha, gamma,
    beta) from ``MODEL.LIBRA.<params_node>``; otherwise ``(cfg, None)``.
    """
    if cfg.MODEL[section].BBOX_REG_LOSS_TYPE != "balanced_l1":
        return cfg, None
    parent = cfg.clone()
    parent.defrost()
    parent.MODEL[section].BBOX_REG_LOSS_TYPE = "smooth_l1"
    p = cfg.MODEL.LIBRA[params_node]
    return parent, dict(alpha=p.ALPHA, gamma=p.GAMMA, beta=p.BETA)
