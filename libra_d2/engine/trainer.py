"""LibraTrainer: detectron2's DefaultTrainer made exact on resume and safe on bad data.

What it adds to DefaultTrainer (same hooks, writers, evaluation):

* **Exact ``--resume``** (detectron2 0.6 and main alike). The checkpoint holds the model,
  the optimizer and the LR scheduler (where this detectron2's trainer state lacks one, as
  0.6's ``DefaultTrainer`` lacks the optimizer, LibraTrainer adds it), the iteration and
  the run's base seed. The training stream is addressed by position
  (:mod:`libra_d2.data.samplers`): batch k is a pure function of (seed, k), with
  detectron2's aspect-ratio grouping, repeat-factor, weighted and random-subset sampling
  rebuilt that way; sample ``p`` of the run has its augmentation RNGs (numpy, random,
  torch) seeded from (seed, p). Every iteration reseeds the main-process RNGs from (seed,
  iteration), so proposal sampling is repeatable too. After a resume the loader restarts at
  the checkpoint's position, so "N iterations straight" and "killed, then resumed" see the
  same images, flips and samples and end with the same weights (CPU), whatever the number
  of loader workers. An unsupported ``SAMPLER_TRAIN`` is an error, not a silent fallback.
  Set ``DATALOADER.EXACT_RESUME: False`` to use detectron2's own loader instead.
* **Atomic checkpoints**: each ``.pth`` and ``last_checkpoint`` is written through
  fvcore's ``PathManager`` (any ``OUTPUT_DIR`` a registered path handler serves); local
  files go to a temporary file renamed into place, so a kill during a write leaves the
  previous checkpoint and ``last_checkpoint`` valid.
* **Data checks** (:mod:`libra_d2.data.checks`): malformed annotation files and unreadable
  images stop training with an error naming the file and image id; degenerate and
  out-of-image boxes are dropped or clipped with a counted warning.
* ``SOLVER.AMP.ENABLED`` on CPU trains under bfloat16 autocast where the processor has
  native bfloat16, float32 elsewhere (:mod:`libra_d2.engine.cpu_amp`; detectron2's
  AMPTrainer requires CUDA).
* A non-finite loss stops training (detectron2's FloatingPointError, raised before the
  optimizer step), so no checkpoint with diverged weights is written.
"""
import logging
import os
import weakref

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer

from ..config import validate_libra_config
from ..data.build import build_loader, stream_from_yacs
from ..utils.seeding import IterationSeedHook, resolve_base_seed
from .checkpoint import AtomicDetectionCheckpointer
from .cpu_amp import cpu_autocast_trainer
from .distributed import ddp_for_cpu_models
from .evaluation import coco_evaluator
from .optimizer import optimizer_from_yacs
from .resume import resume_stream

__all__ = ["LibraTrainer"]

logger = logging.getLogger(__name__)


class LibraTrainer(DefaultTrainer):
    """DefaultTrainer + COCOEvaluator + exact resume, atomic checkpoints and data checks.

    The keys only it honours come from :func:`~libra_d2.config.add_libra_trainer_config`
    (where the config lacks them: SGD, no fused kernel, exact resume).
    Multi-process training on CPU (gloo, detectron2 main's launch) works too: the model is
    wrapped in DDP without GPU device ids."""

    def __init__(self, cfg):
        self._seed_hook = IterationSeedHook(resolve_base_seed(cfg.SEED))
        with ddp_for_cpu_models():
            super().__init__(cfg)
        cpu_autocast_trainer(self._trainer)  # SOLVER.AMP.ENABLED on CPU: bfloat16 autocast

    @classmethod
    def build_model(cls, cfg):
        """DefaultTrainer's model, after the whole config passed
        :func:`~libra_d2.config.validate_libra_config`."""
        validate_libra_config(cfg)
        return super().build_model(cfg)

    # ----------------------------------------------------------------- data
    def _exact_loader(self, cfg, start_iter=0):
        seed = self._seed_hook.base_seed
        return build_loader(stream_from_yacs(cfg, seed), seed, start_iter)

    def _use_exact_loader(self, cfg):
        return bool(cfg.DATALOADER.get("EXACT_RESUME", True))

    def build_train_loader(self, cfg):
        if self._use_exact_loader(cfg):
            return self._exact_loader(cfg)
        return build_detection_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return coco_evaluator(dataset_name, output_folder)

    # ------------------------------------------------------------- optimizer
    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, or AdamW when ``SOLVER.OPTIMIZER`` says so (same parameter groups
        and gradient clipping): :func:`~libra_d2.engine.optimizer.optimizer_from_yacs`."""
        return optimizer_from_yacs(cfg, model)

    # ----------------------------------------------------------- checkpoints
    def build_hooks(self):
        # atomic writes for every checkpoint, including the periodic ones built below
        old = self.checkpointer
        self.checkpointer = AtomicDetectionCheckpointer(
            old.model, old.save_dir, save_to_disk=old.save_to_disk, trainer=weakref.proxy(self)
        )
        for key, obj in old.checkpointables.items():
            self.checkpointer.checkpointables.setdefault(key, obj)
        hooks = super().build_hooks()
        return [self._seed_hook] + hooks

    def state_dict(self):
        ret = super().state_dict()
        if "optimizer" not in ret.get("_trainer", {}):  # detectron2 0.6's DefaultTrainer saves no optimizer
            ret["libra_optimizer"] = self.optimizer.state_dict()
        if not any("LRScheduler" in k for k in ret.get("hooks", {})):
            ret["libra_scheduler"] = self.scheduler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "libra_optimizer" in state_dict:
            self.optimizer.load_state_dict(state_dict["libra_optimizer"])
        if "libra_scheduler" in state_dict:
            self.scheduler.load_state_dict(state_dict["libra_scheduler"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if resume and self._use_exact_loader(self.cfg):
            if resume_stream(self._trainer, self.start_iter, lambda it: self._exact_loader(self.cfg, start_iter=it)):
                logger.info("Resumed at iteration %d; the training stream continues at that position", self.start_iter)
