"""Seeds of a run: the base seed, the seeds derived from it, and the per-iteration reseeding
of the main process.

Every random draw of a run derives from the base seed through :func:`seed_from`. Draws of
different purposes are kept apart by a salt among the hashed values (the numbers are part
of every recorded run's identity: changing one changes every trajectory):
"""
import os

import numpy as np
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = ["seed_from", "resolve_base_seed", "IterationSeedHook", "SALT_REPEAT_FACTORS", "SALT_GROUP_DRAWS",
           "SALT_RANDOM_SUBSET", "SALT_WORKER_BASE_SEED"]

SALT_REPEAT_FACTORS = 1  # the stochastic rounding of repeat factors, per group and epoch
SALT_GROUP_DRAWS = 2  # which aspect-ratio group each block of batches comes from
SALT_RANDOM_SUBSET = 3  # the images of a RandomSubsetTrainingSampler run
SALT_WORKER_BASE_SEED = 7  # the loader's own generator (the workers' base seed)


def seed_from(*values) -> int:
    """A 31-bit seed derived from integers (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0] & 0x7FFFFFFF)


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
