"""The optimizer of both config systems: torch's optimizer over detectron2's parameter
groups, with detectron2's gradient clipping."""
import torch

__all__ = ["clipped_optimizer", "optimizer_from_yacs"]


def clipped_optimizer(optimizer, params, clip_value=None, clip_type="norm", norm_type=2.0, **kwargs):
    """``optimizer(params, **kwargs)`` with detectron2's gradient clipping (the yacs
    ``SOLVER.CLIP_GRADIENTS``: ``clip_type`` "value" or "norm" (per parameter), ``clip_value``;
    None: no clipping). LazyConfig: ``L(clipped_optimizer)(optimizer=torch.optim.AdamW,
    params=L(get_default_optimizer_params)(), lr=1e-3, weight_decay=0.05, clip_value=5.0)``."""
    if clip_value is None:
        return optimizer(params, **kwargs)
    from detectron2.config import CfgNode as CN
    from detectron2.solver.build import maybe_add_gradient_clipping

    cfg = CN({"SOLVER": {"CLIP_GRADIENTS": {"ENABLED": True, "CLIP_TYPE": clip_type, "CLIP_VALUE": float(clip_value),
                                            "NORM_TYPE": float(norm_type)}}})
    return maybe_add_gradient_clipping(cfg, optimizer)(params, **kwargs)


def optimizer_from_yacs(cfg, model):
    """The optimizer ``SOLVER.OPTIMIZER`` names: "SGD" is detectron2's own ``build_optimizer``
    (as each detectron2 version builds it); "AdamW" is torch's (decoupled ``WEIGHT_DECAY``;
    ``FUSED_OPTIMIZER``: its fused kernel) over detectron2's parameter groups
    (``WEIGHT_DECAY_NORM``, ``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``), through
    :func:`clipped_optimizer` with ``SOLVER.CLIP_GRADIENTS``."""
    from detectron2.solver.build import build_optimizer, get_default_optimizer_params

    s = cfg.SOLVER
    if s.get("OPTIMIZER", "SGD") == "SGD":
        return build_optimizer(cfg, model)
    params = get_default_optimizer_params(model, base_lr=s.BASE_LR, weight_decay_norm=s.WEIGHT_DECAY_NORM,
                                          bias_lr_factor=s.BIAS_LR_FACTOR, weight_decay_bias=s.WEIGHT_DECAY_BIAS)
    kwargs = dict(lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY)
    if s.get("FUSED_OPTIMIZER", False):
        kwargs["fused"] = True
    clip = s.CLIP_GRADIENTS
    return clipped_optimizer(torch.optim.AdamW, params, clip_value=clip.CLIP_VALUE if clip.ENABLED else None,
                             clip_type=clip.CLIP_TYPE, norm_type=clip.NORM_TYPE, **kwargs)
