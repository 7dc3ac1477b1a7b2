"""Config keys that only ``LibraTrainer`` honours, and the guard that stops a run whose
trainer would silently ignore them.

``SOLVER.OPTIMIZER`` (other than SGD) and ``SOLVER.FUSED_OPTIMIZER`` are read by
``LibraTrainer.build_optimizer``; detectron2's own ``DefaultTrainer`` builds SGD whatever
they say, i.e. it would train the built-in recipe with SGD at AdamW's learning rate. A
libra-d2 component built from such a config carries a guard: its first forward pass in
training mode with gradients raises :class:`~libra_d2.config.LibraConfigError` naming
``LibraTrainer``, unless the guard was released: by ``LibraTrainer`` (which builds the
model), by ``LibraTrainer.build_optimizer`` (which honours the keys, e.g. in a loop of your
own), or by :func:`release_trainer_guards` (you build the optimizer yourself). Inference and
loss evaluation under ``torch.no_grad()`` are never affected.
"""
from typing import List

import torch

from ..config import LibraConfigError

__all__ = ["trainer_only_settings", "guard_trainer_only_settings", "release_trainer_guards"]

_ATTR = "_libra_trainer_only_settings"


def trainer_only_settings(cfg) -> List[str]:
    """The settings of ``cfg`` that only ``LibraTrainer`` honours, as ``"KEY = value"``."""
    solver = cfg.SOLVER
    out = []
    if solver.get("OPTIMIZER", "SGD") != "SGD":
        out.append(f"SOLVER.OPTIMIZER = {solver.OPTIMIZER!r}")
    if solver.get("FUSED_OPTIMIZER", False):
        out.append("SOLVER.FUSED_OPTIMIZER = True")
    return out


def _check(module, _inputs):
    settings = getattr(module, _ATTR, None)
    if settings and module.training and torch.is_grad_enabled():
        raise LibraConfigError(
            f"{', '.join(settings)}: only libra_d2.training.LibraTrainer honours this; the trainer running this "
            "model did not build its optimizer from it (detectron2's DefaultTrainer would silently train with SGD "
            "at this learning rate). Subclass LibraTrainer instead of DefaultTrainer; in a loop of your own, build "
            "the optimizer with LibraTrainer.build_optimizer(cfg, model), or call "
            "libra_d2.engine.trainer_keys.release_trainer_guards(model) if you build it yourself"
        )


def guard_trainer_only_settings(module, settings: List[str]):
    """Attach the guard to ``module`` (a libra-d2 component) when ``settings`` is not empty."""
    if settings:
        setattr(module, _ATTR, list(settings))
        module.register_forward_pre_hook(_check)
    return module


def release_trainer_guards(model):
    """Mark ``model``'s optimizer as built from these keys (``LibraTrainer`` does it for the
    model it trains; call it yourself when your own code builds that optimizer)."""
    for m in model.modules():
        if getattr(m, _ATTR, None):
            setattr(m, _ATTR, [])
    return model
