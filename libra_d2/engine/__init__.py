"""The training engine of both config systems.

``LibraTrainer`` (yacs, :mod:`.trainer`) and the LazyConfig loop (:mod:`.lazy`) are thin
translations into these modules; each concept lives in exactly one place:

* :mod:`.stream`: a config (yacs or lazy) -> :class:`~.stream.TrainingStream` (dataset dicts
  after the data checks, mapper, batch size, workers, sampler plan) -> the position-addressed
  loader (:func:`~.stream.build_loader`), over the samplers of :mod:`.samplers`;
* :mod:`.seeding`: the run's base seed, the seeds derived from it, the per-iteration reseeding;
* :mod:`.resume`: continuing a trainer's stream at the checkpoint's position;
* :mod:`.optimizer`: the optimizer (SGD / AdamW with detectron2's clipping) of both paths;
* :mod:`.cpu_amp`: AMPTrainer's step under CPU bfloat16 autocast;
* :mod:`.distributed`: DDP wrapping for GPU and CPU models;
* :mod:`.checkpoint`: atomic checkpoints through fvcore's ``PathManager``;
* :mod:`.data_checks`: annotation and image checks before training;
* :mod:`.results`: the COCO evaluator's arguments and ``eval_results.json``.
"""
from ..data.build import PositionSeededDataset, TrainingStream, build_loader, stream_from_lazy, stream_from_yacs
from ..utils.seeding import IterationSeedHook, resolve_base_seed, seed_from
from .checkpoint import AtomicDetectionCheckpointer
from .distributed import create_ddp_model
from .evaluation import coco_evaluator, write_results
from .optimizer import clipped_optimizer, optimizer_from_yacs
from .resume import continue_stream_at, resume_stream
from .trainer import LibraTrainer

__all__ = [
    "LibraTrainer", "AtomicDetectionCheckpointer", "create_ddp_model", "clipped_optimizer", "optimizer_from_yacs",
    "continue_stream_at", "resume_stream", "coco_evaluator", "write_results", "IterationSeedHook",
    "resolve_base_seed", "seed_from", "PositionSeededDataset", "TrainingStream", "build_loader",
    "stream_from_lazy", "stream_from_yacs",
]
