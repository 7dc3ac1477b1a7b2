"""The run's base seed and the per-iteration reseeding of the main process."""
import os

from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from .samplers import seed_from

__all__ = ["resolve_base_seed", "IterationSeedHook"]


def resolve_base_seed(seed: int) -> int:
    """``seed`` when >= 0 (``SEED`` / ``train.seed``), else a fresh random one. Every draw of
    the run (data order, augmentation, proposal sampling) derives from it."""
    seed = int(seed)
    if seed >= 0:
        return seed
    return seed_from(os.getpid(), int.from_bytes(os.urandom(4), "little"))


class IterationSeedHook(HookBase):
    """Reseeds the main process's RNGs (numpy, random, torch) from (base seed, iteration,
    rank) before every step, so a resumed run draws what the straight run drew. Its state
    (the base seed) travels in checkpoints."""

    def __init__(self, base_seed):
        self.base_seed = int(base_seed)

    def before_step(self):
        seed_all_rng(seed_from(self.base_seed, self.trainer.iter, comm.get_rank()))

    def state_dict(self):
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state):
        self.base_seed = int(state["base_seed"])
