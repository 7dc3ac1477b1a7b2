"""LibraTrainer: detectron2's DefaultTrainer made exact on resume and safe on bad data.

What it adds to DefaultTrainer (same hooks, writers, evaluation):

* **Exact ``--resume``** (detectron2 0.6 and main alike). The checkpoint holds the model,
  the optimizer and the LR scheduler (both detectron2 versions installed here save them
  through the trainer state; libra-d2 checks that they are registered), the iteration and
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
* **Atomic checkpoints**: each ``.pth`` and ``last_checkpoint`` is written to a temporary
  file and renamed into place, so a kill during a write leaves the previous checkpoint and
  ``last_checkpoint`` valid.
* **Data checks** (:mod:`libra_d2.data.checks`): malformed annotation files and unreadable
  images stop training with an error naming the file and image id; degenerate and
  out-of-image boxes are dropped or clipped with a counted warning.
* A non-finite loss stops training (detectron2's FloatingPointError, raised before the
  optimizer step), so no checkpoint with diverged weights is written.
"""
import contextlib
import logging
import os
import random
import weakref

import detectron2.engine.defaults as d2_defaults
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from .data.checks import DatasetError, check_json_file, sanitize_boxes
from .data.samplers import PositionBatchSampler, seed_from, training_plan_from_config
from .utils.env import detectron2_has_cpp_ops

__all__ = ["LibraTrainer", "AtomicDetectionCheckpointer", "PositionBatchSampler", "seed_from"]

logger = logging.getLogger(__name__)


def _seed_all(seed):
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


class PositionSeededDataset(torch.utils.data.Dataset):
    """Maps (position, index) to ``mapper(dicts[index])`` with RNGs seeded from (seed, position).

    If the mapper drops a sample (returns None), the next index is tried, deterministically.
    Errors while loading an image are re-raised naming its image id and file.
    """

    def __init__(self, dicts, mapper, seed):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, item):
        pos, idx = item
        for attempt in range(len(self.dicts)):
            d = self.dicts[(idx + attempt) % len(self.dicts)]
            _seed_all(seed_from(self.seed, pos, attempt))
            try:
                out = self.mapper(d)
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for bad files
                raise DatasetError(f"image id {d.get('image_id')} ({d.get('file_name')}): cannot be loaded: {e}") from e
            if out is not None:
                return out
        raise DatasetError("the mapper dropped every training sample")


def _as_batch(batch):
    return batch


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files appear only complete (write temp file, fsync, rename)."""

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def _atomic_write(path, write):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class IterationSeedHook(HookBase):
    """Reseeds the main process's RNGs from (base seed, iteration) before every step; its
    state (the base seed) travels in checkpoints."""

    def __init__(self, base_seed):
        self.base_seed = int(base_seed)

    def before_step(self):
        _seed_all(seed_from(self.base_seed, self.trainer.iter, comm.get_rank()))

    def state_dict(self):
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state):
        self.base_seed = int(state["base_seed"])


@contextlib.contextmanager
def _cpu_ddp_without_device_ids():
    """While active, detectron2's ``create_ddp_model`` (main) wraps CPU models in DDP without
    ``device_ids`` (it passes ``[local_rank]`` whatever the device, which DDP rejects for CPU
    modules). GPU models are wrapped exactly as detectron2 does. No-op where detectron2 has no
    ``create_ddp_model`` (0.6, whose launch() cannot start CPU processes anyway)."""
    original = getattr(d2_defaults, "create_ddp_model", None)
    if original is None:
        yield
        return

    def create_ddp_model(model, **kwargs):
        params = list(model.parameters())
        if comm.get_world_size() > 1 and "device_ids" not in kwargs and params and params[0].device.type == "cpu":
            kwargs["device_ids"] = None
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class LibraTrainer(DefaultTrainer):
    """DefaultTrainer + COCOEvaluator + exact resume, atomic checkpoints and data checks.

    Multi-process training on CPU (gloo, detectron2 main's launch) works too: the model is
    wrapped in DDP without GPU device ids."""

    def __init__(self, cfg):
        seed = cfg.SEED if cfg.SEED >= 0 else seed_from(os.getpid(), int.from_bytes(os.urandom(4), "little"))
        self._seed_hook = IterationSeedHook(seed)
        with _cpu_ddp_without_device_ids():
            super().__init__(cfg)

    # ----------------------------------------------------------------- data
    @classmethod
    def _dataset_dicts(cls, cfg, names):
        for name in names:
            json_file = MetadataCatalog.get(name).get("json_file")
            if json_file and os.path.isfile(json_file) and os.path.getsize(json_file) < 64 * 2**20:
                check_json_file(json_file)  # small files: check before detectron2 parses them
        try:
            dicts = get_detection_dataset_dicts(
                names,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
                proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
            )
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            files = [MetadataCatalog.get(n).get("json_file", n) for n in names]
            raise DatasetError(f"cannot load {', '.join(map(str, files))}: {e}") from e
        return sanitize_boxes(dicts, ",".join(names))

    def _exact_loader(self, cfg, start_iter=0):
        names = list(cfg.DATASETS.TRAIN)
        sizes = None
        if cfg.DATALOADER.SAMPLER_TRAIN.startswith("Weighted"):  # weights per dataset: load them one by one
            parts = [self._dataset_dicts(cfg, [n]) for n in names]
            sizes = [len(p) for p in parts]
            dicts = [d for p in parts for d in p]
        else:
            dicts = self._dataset_dicts(cfg, names)
        world = comm.get_world_size()
        total = cfg.SOLVER.IMS_PER_BATCH
        if total % world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH = {total} is not divisible by the number of processes ({world})")
        seed = self._seed_hook.base_seed
        plan = training_plan_from_config(cfg, dicts, seed, dataset_sizes=sizes)
        sampler = PositionBatchSampler(
            len(dicts), total // world, seed, start=start_iter, rank=comm.get_rank(), world_size=world, **plan
        )
        dataset = PositionSeededDataset(dicts, DatasetMapper(cfg, True), seed)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_as_batch
        )

    def _use_exact_loader(self, cfg):
        return bool(cfg.DATALOADER.get("EXACT_RESUME", True))

    def build_train_loader(self, cfg):
        if isinstance(self, LibraTrainer) and self._use_exact_loader(cfg):
            return self._exact_loader(cfg)
        return build_detection_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=detectron2_has_cpp_ops())

    # ------------------------------------------------------------- optimizer
    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, or AdamW when ``SOLVER.OPTIMIZER`` says so (same parameter groups
        and gradient clipping)."""
        if cfg.SOLVER.get("OPTIMIZER", "SGD") == "SGD":
            return super().build_optimizer(cfg, model)
        from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        # SOLVER.FUSED_OPTIMIZER: torch's fused AdamW kernel; without it, torch's default choice
        extra = {"fused": True} if cfg.SOLVER.get("FUSED_OPTIMIZER", False) else {}
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **extra
        )

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
        inner = ret.get("_trainer", {})
        if "optimizer" not in inner:  # not saved by this detectron2 version: add it here
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
        if resume and self.start_iter > 0 and self._use_exact_loader(self.cfg):
            loader = self._exact_loader(self.cfg, start_iter=self.start_iter)
            inner = self._trainer
            inner.data_loader = loader
            if hasattr(inner, "_data_loader_iter_obj"):  # detectron2 main: created lazily
                inner._data_loader_iter_obj = None
            else:  # detectron2 0.6: created in __init__
                inner._data_loader_iter = iter(loader)
            logger.info("Resumed at iteration %d; the training stream continues at that position", self.start_iter)
