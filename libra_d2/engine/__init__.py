"""The training engine shared by both config systems.

``LibraTrainer`` (yacs, :mod:`libra_d2.training`) and the LazyConfig loop
(:mod:`libra_d2.lazy`) are thin translations into these functions; each concept lives in
exactly one place:

* :mod:`.stream`: a config (yacs or lazy) -> :class:`~.stream.TrainingStream` (dataset dicts
  after the data checks, mapper, batch size, workers, sampler plan) -> the position-addressed
  loader (:func:`~.stream.build_loader`);
* :mod:`.seeding`: the run's base seed and the per-iteration reseeding hook;
* :mod:`.resume`: continuing a trainer's stream at the checkpoint's position;
* :mod:`.distributed`: DDP wrapping for GPU and CPU models;
* :mod:`.checkpoint`: atomic checkpoints through fvcore's ``PathManager``;
* :mod:`.results`: the COCO evaluator's arguments and ``eval_results.json``.
"""
from .checkpoint import AtomicDetectionCheckpointer
from .distributed import create_ddp_model
from .results import coco_evaluator, write_results
from .resume import continue_stream_at
from .seeding import IterationSeedHook, resolve_base_seed
from .stream import PositionSeededDataset, TrainingStream, build_loader, stream_from_lazy, stream_from_yacs

__all__ = [
    "AtomicDetectionCheckpointer", "create_ddp_model", "continue_stream_at", "coco_evaluator", "write_results",
    "IterationSeedHook", "resolve_base_seed", "PositionSeededDataset", "TrainingStream", "build_loader",
    "stream_from_lazy", "stream_from_yacs",
]
