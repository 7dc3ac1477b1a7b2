"""Config keys added by libra-d2, with defaults, and their validation.

The model keys live under ``MODEL.LIBRA`` and ``MODEL.BFP`` (:func:`add_libra_config`);
``SOLVER.OPTIMIZER``, ``SOLVER.FUSED_OPTIMIZER`` and ``DATALOADER.EXACT_RESUME`` are read by
``LibraTrainer`` only and added by :func:`add_libra_trainer_config` (a config that sets one
without it stops at merge, naming LibraTrainer). "balanced_l1" becomes a valid value
of ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE``, ``MODEL.RPN.BBOX_REG_LOSS_TYPE`` and
``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` for the libra-d2 components.
"""
from detectron2.config import CfgNode as CN

__all__ = [
    "add_libra_config", "add_libra_trainer_config", "get_libra_cfg", "has_trainer_keys", "has_key", "TRAINER_KEYS",
    "validate_libra_config", "require_libra_config", "split_balanced_l1", "LibraConfigError",
    "check_choice", "check_number", "check_neg_pos_ub", "validate_sampler_args", "validate_balanced_l1_args",
    "validate_refine_args", "validate_min_pos_iou", "REFINE_TYPES",
]

NEG_BIN_UPPERS = ("max_iou", "bg_thresh")
# keys that only libra_d2.engine.LibraTrainer honours (add_libra_trainer_config adds them)
TRAINER_KEYS = ("SOLVER.OPTIMIZER", "SOLVER.FUSED_OPTIMIZER", "DATALOADER.EXACT_RESUME")
_TRAINER_ONLY_NOTE = (
    "{key} is honoured only by libra_d2.engine.LibraTrainer (detectron2's DefaultTrainer would ignore it, e.g. "
    "train with SGD at AdamW's learning rate). Train with LibraTrainer (train_net.py does) and call "
    "libra_d2.config.add_libra_trainer_config(cfg) before merging this config, or remove the key to train with "
    "detectron2's own trainer."
)
REFINE_TYPES = ("non_local", "conv", "none")
OPTIMIZERS = ("SGD", "AdamW")


class LibraConfigError(ValueError):
    """A libra-d2 config value is out of range. The message names key, value and range."""


def add_libra_config(cfg):
    """Add every libra-d2 model key with its default to ``cfg`` (a detectron2 CfgNode), in place
    (LibraTrainer's own keys: :func:`add_libra_trainer_config`)."""
    _C = cfg
    _C.MODEL.LIBRA = CN()
    # Positive sampler of the box head, by name in libra_d2.modeling.roi_samplers.ROI_SAMPLER_REGISTRY:
    # "instance_balanced" (equal quota per ground-truth box), "random" (detectron2's uniform
    # sampling), "ohem" (highest classification loss), or one registered by the user.
    _C.MODEL.LIBRA.POS_SAMPLER = "instance_balanced"
    # Negative sampler of the box head: "iou_balanced" (equal quota per IoU bin), "random",
    # "ohem", or one registered by the user.
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
    # LibraRetinaNet's loss divisor: "moving_average" (detectron2: a moving average of the
    # foreground anchor count, initial 100, momentum 0.9) or "batch" (the reference: this
    # batch's foreground count, at least 1).
    _C.MODEL.LIBRA.RETINANET_LOSS_NORMALIZER = "moving_average"
    # LibraRetinaNet: True leaves the anchors outside each image's own area (rounded up to the
    # size divisibility), i.e. in the batch's padding, out of matching and both losses, as
    # the reference does. False: detectron2 labels them like any other anchor.
    _C.MODEL.LIBRA.RETINANET_IGNORE_PADDING_ANCHORS = False
    # Anchor matching of LibraRPN and LibraRetinaNet. False: detectron2's Matcher. True: the
    # reference's low-quality rule (libra_d2.modeling.matcher.ReferenceMatcher): an anchor that is a
    # box's best match becomes positive only at IoU >= the MIN_POS_IOU below, and goes to the
    # last such box. The reference's values: 0.3 for the RPN, 0.0 for RetinaNet.
    _C.MODEL.LIBRA.REFERENCE_MATCHER = False
    _C.MODEL.LIBRA.RPN_MIN_POS_IOU = 0.3
    _C.MODEL.LIBRA.RETINANET_MIN_POS_IOU = 0.0
    # Box decoding of LibraRPN, the Libra box heads and LibraRetinaNet. False: detectron2's
    # Box2BoxTransform (the log-scale dw, dh bounded from above). True: bounded at both ends,
    # as the reference's decoder (ReferenceClampBox2BoxTransform). Converted reference
    # checkpoints set True.
    _C.MODEL.LIBRA.REFERENCE_DECODER_CLAMP = False

    # Keys only LibraTrainer honours are added by add_libra_trainer_config; without it a
    # config that sets one fails at merge with an error naming LibraTrainer.
    for key in TRAINER_KEYS:
        if not cfg.key_is_renamed(key):
            cfg.register_renamed_key(key, "a LibraTrainer key", _TRAINER_ONLY_NOTE.format(key=key))

    _C.MODEL.BFP = CN()
    # build_bfp_backbone: the registered builder of the pyramid backbone that the BFP wraps
    # (any builder whose outputs are levels of one channel count).
    _C.MODEL.BFP.BASE_BACKBONE = "build_resnet_fpn_backbone"
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


def _arg_key(owner, arg, yacs_key):
    """How an error names a value: the config key alone for a config checked up front
    (``owner`` None), else the component's argument and the config key it comes from."""
    return yacs_key if owner is None else f"{owner}({arg}=...) [config key {yacs_key}]"


def validate_sampler_args(owner, pos_sampler, neg_sampler, floor_thresh, floor_fraction, num_bins, neg_bin_upper,
                          bg_iou_thresh, samplers=None):
    """The box-head sampler's arguments (``MODEL.LIBRA.*_SAMPLER``, ``FLOOR_*``, ``NUM_BINS``,
    ``NEG_BIN_UPPER``; ``bg_iou_thresh`` is ``ROI_HEADS.IOU_THRESHOLDS[0]``). ``owner`` names
    the component whose constructor checks them (None: a config checked up front).
    ``samplers``: ``{"positive": names, "negative": names}`` allowed by the sampler registry
    (the box head passes them; None: names are strings, the registry is checked at build)."""
    k = lambda arg, key: _arg_key(owner, arg, f"MODEL.LIBRA.{key}")  # noqa: E731
    for role, arg, key, value in (("positive", "pos_sampler", "POS_SAMPLER", pos_sampler),
                                  ("negative", "neg_sampler", "NEG_SAMPLER", neg_sampler)):
        if samplers is not None:
            check_choice(k(arg, key), value, samplers[role])
        elif not isinstance(value, str) or not value:
            _fail(k(arg, key), value, "the name of a registered RoI sampler")
    check_number(k("floor_thresh", "FLOOR_THRESH"), floor_thresh, lo=-1.0, hi=1.0)
    if floor_thresh != -1 and floor_thresh < 0:
        _fail(k("floor_thresh", "FLOOR_THRESH"), floor_thresh, "-1 (no floor set) or a value in [0, 1]")
    check_number(k("floor_fraction", "FLOOR_FRACTION"), floor_fraction, lo=0.0, hi=1.0)
    check_number(k("num_bins", "NUM_BINS"), num_bins, lo=1, integer=True)
    check_choice(k("neg_bin_upper", "NEG_BIN_UPPER"), neg_bin_upper, NEG_BIN_UPPERS)
    if neg_bin_upper == "bg_thresh" and bg_iou_thresh <= max(float(floor_thresh), 0.0):
        _fail(k("neg_bin_upper", "NEG_BIN_UPPER"), "bg_thresh",
              f"only when the background IoU threshold ROI_HEADS.IOU_THRESHOLDS[0] ({bg_iou_thresh}) > the bins' "
              f"lower edge max(FLOOR_THRESH, 0) ({max(float(floor_thresh), 0.0)})")


def validate_balanced_l1_args(owner, arg, params, yacs_node):
    """Balanced L1 parameters (dict alpha/gamma/beta, or None: not used), each > 0.
    ``arg`` is the constructor argument holding the dict (None: ``balanced_l1_<name>``)."""
    if params is None:
        return
    for name in ("alpha", "gamma", "beta"):
        check_number(_arg_key(owner, f"{arg}[{name!r}]" if arg else f"balanced_l1_{name}",
                              f"MODEL.LIBRA.{yacs_node}.{name.upper()}"), params.get(name), lo=0.0, lo_open=True)


def validate_refine_args(owner, refine_level, refine_type, num_levels=None):
    """The Balanced Feature Pyramid's refine level (an index into ``num_levels`` levels; an
    integer >= 0 when the number is not known yet) and refine type."""
    key = _arg_key(owner, "refine_level", "MODEL.BFP.REFINE_LEVEL")
    check_number(key, refine_level, lo=0, integer=True)
    if num_levels is not None and not refine_level < num_levels:
        _fail(key, refine_level, f"0..{num_levels - 1} (an index into the {num_levels} pyramid levels)")
    check_choice(_arg_key(owner, "refine_type", "MODEL.BFP.REFINE_TYPE"), refine_type, REFINE_TYPES)


def validate_min_pos_iou(owner, value, yacs_key):
    """A matcher's minimum IoU for low-quality positives, in [0, 1]."""
    check_number(_arg_key(owner, "min_low_quality_iou", yacs_key), value, lo=0.0, hi=1.0)


def _check_bool(key, value):
    if not isinstance(value, bool):
        _fail(key, value, "True or False")


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


def add_libra_trainer_config(cfg):
    """Add the keys that only ``LibraTrainer`` honours, with their defaults, to ``cfg`` (after
    :func:`add_libra_config`; idempotent). Call it when the config will train under
    ``LibraTrainer`` (``train_net.py`` and :func:`get_libra_cfg` do); detectron2's own trainer
    would ignore these keys, so a config merged without them that sets one stops at merge."""
    renamed = cfg.__dict__.get(CN.RENAMED_KEYS, {})
    for key in TRAINER_KEYS:
        renamed.pop(key, None)
    # Optimizer: "SGD" (detectron2's: MOMENTUM, NESTEROV) or "AdamW" (torch's, with
    # SOLVER.WEIGHT_DECAY as its decoupled weight decay). Both use detectron2's parameter
    # groups (WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, ...) and SOLVER.CLIP_GRADIENTS.
    cfg.SOLVER.OPTIMIZER = cfg.SOLVER.get("OPTIMIZER", "SGD")
    # AdamW only: torch's fused kernel (one pass per parameter; on a small CPU the step of the
    # built-in model takes a third of the time). The same update up to float rounding, so a
    # run with it follows another trajectory than one without, as a change of thread count does.
    cfg.SOLVER.FUSED_OPTIMIZER = cfg.SOLVER.get("FUSED_OPTIMIZER", False)
    # Training stream addressed by position with per-sample seeds, so --resume continues
    # exactly (libra_d2.engine.trainer). False: detectron2's own train loader.
    cfg.DATALOADER.EXACT_RESUME = cfg.DATALOADER.get("EXACT_RESUME", True)
    return cfg


def get_libra_cfg(config_file=None, opts=(), trainer=True):
    """A detectron2 config with libra-d2's keys (and, if ``trainer``, LibraTrainer's), merged
    from ``config_file`` (yaml) and ``opts`` (``KEY VALUE`` list): the one loader of
    ``train_net.py``, the tools and the benchmarks."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_libra_config(cfg)
    if trainer:
        add_libra_trainer_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def has_trainer_keys(cfg):
    """True when ``cfg`` carries LibraTrainer's keys (:func:`add_libra_trainer_config`)."""
    return all(has_key(cfg, key) for key in TRAINER_KEYS)


def has_key(cfg, key):
    """True when the dotted ``key`` (e.g. ``"SOLVER.OPTIMIZER"``) exists in ``cfg``."""
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def require_libra_config(cfg):
    """Raise :class:`LibraConfigError` saying to call :func:`add_libra_config` when ``cfg``
    lacks the libra-d2 keys (what a component's ``from_config`` needs before it reads them)."""
    for key in ("MODEL.LIBRA", "MODEL.BFP"):
        _get(cfg, key)
    return cfg


def validate_libra_config(cfg):
    """Check every libra-d2 key of a yacs config up front; raise :class:`LibraConfigError`
    naming key, value and range.

    The model keys go through the same checks the components' constructors run on their
    arguments (so a config, a LazyConfig and direct Python use fail alike); the rest is what
    no component reads: LibraTrainer's keys where the config has them, and whether the component that gets
    ``"balanced_l1"`` knows it. ``LibraTrainer.build_model`` (and so ``train_net.py``) calls it.
    """
    g = lambda key: _get(cfg, key)  # noqa: E731
    validate_sampler_args(None, g("MODEL.LIBRA.POS_SAMPLER"), g("MODEL.LIBRA.NEG_SAMPLER"),
                          g("MODEL.LIBRA.FLOOR_THRESH"), g("MODEL.LIBRA.FLOOR_FRACTION"), g("MODEL.LIBRA.NUM_BINS"),
                          g("MODEL.LIBRA.NEG_BIN_UPPER"), g("MODEL.ROI_HEADS.IOU_THRESHOLDS")[0])
    for node in ("BALANCED_L1", "RPN_BALANCED_L1", "RETINANET_BALANCED_L1"):
        params = {p.lower(): g(f"MODEL.LIBRA.{node}.{p}") for p in ("ALPHA", "GAMMA", "BETA")}
        validate_balanced_l1_args(None, None, params, node)
    check_neg_pos_ub("MODEL.LIBRA.RPN_NEG_POS_UB", g("MODEL.LIBRA.RPN_NEG_POS_UB"))
    validate_refine_args(None, g("MODEL.BFP.REFINE_LEVEL"), g("MODEL.BFP.REFINE_TYPE"))
    for key in ("MODEL.LIBRA.RPN_MIN_POS_IOU", "MODEL.LIBRA.RETINANET_MIN_POS_IOU"):
        validate_min_pos_iou(None, g(key), key)
    for key in ("MODEL.LIBRA.P7_RELU", "MODEL.LIBRA.RETINANET_CLIP_BEFORE_NMS", "MODEL.LIBRA.REFERENCE_MATCHER",
                "MODEL.LIBRA.REFERENCE_DECODER_CLAMP", "MODEL.LIBRA.RETINANET_IGNORE_PADDING_ANCHORS"):
        _check_bool(key, g(key))
    if has_trainer_keys(cfg):  # LibraTrainer's keys, where the config has them
        for key in ("SOLVER.FUSED_OPTIMIZER", "DATALOADER.EXACT_RESUME"):
            _check_bool(key, g(key))
        check_choice("SOLVER.OPTIMIZER", g("SOLVER.OPTIMIZER"), OPTIMIZERS)
        if g("SOLVER.FUSED_OPTIMIZER") and g("SOLVER.OPTIMIZER") != "AdamW":
            _fail("SOLVER.FUSED_OPTIMIZER", True,
                  "False unless SOLVER.OPTIMIZER is 'AdamW' (the fused kernel is AdamW's)")
    check_choice("MODEL.LIBRA.RETINANET_LOSS_NORMALIZER", g("MODEL.LIBRA.RETINANET_LOSS_NORMALIZER"),
                 ("moving_average", "batch"))
    _check_balanced_l1_owners(cfg)
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
