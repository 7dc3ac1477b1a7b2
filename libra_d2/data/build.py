"""The training stream: from a config (yacs or lazy) to the position-addressed loader.

A :class:`TrainingStream` is what both config systems reduce to: the checked dataset dicts,
the mapper, the total batch size, the number of loader workers and the sampler plan
(aspect-ratio groups, repeat factors, random subset; see :mod:`libra_d2.data.samplers`).
:func:`build_loader` turns it into the one loader both paths train with: batch k is a pure
function of (base seed, k), sample p's augmentation RNGs are seeded from (seed, p).
"""
import dataclasses
import os
from typing import Any, Callable, List, Optional

import torch
from detectron2.data.build import trivial_batch_collator
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..utils.seeding import SALT_WORKER_BASE_SEED, seed_from
from .checks import DatasetError, check_json_file, sanitize_boxes
from .samplers import PositionBatchSampler, aspect_groups, random_subset, training_plan_from_config

__all__ = ["TrainingStream", "PositionSeededDataset", "build_loader", "checked_dataset_dicts", "stream_from_yacs",
           "stream_from_lazy"]

_LAZY_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler")


@dataclasses.dataclass
class TrainingStream:
    dicts: List[dict]
    mapper: Callable[[dict], Any]
    total_batch_size: int
    num_workers: int
    plan: dict  # PositionBatchSampler's groups / repeat_factors / subset
    batch_size_key: str = "SOLVER.IMS_PER_BATCH"  # how the config names it, for errors


class PositionSeededDataset(torch.utils.data.Dataset):
    """Maps (position, index) to ``mapper(dicts[index])`` with the RNGs seeded from (seed,
    position). A sample the mapper drops (None) is replaced by the next index,
    deterministically. An image that cannot be loaded is an error naming its id and file."""

    def __init__(self, dicts, mapper, seed):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, item):
        pos, idx = item
        for attempt in range(len(self.dicts)):
            d = self.dicts[(idx + attempt) % len(self.dicts)]
            seed_all_rng(seed_from(self.seed, pos, attempt))
            try:
                out = self.mapper(d)
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for bad files
                raise DatasetError(f"image id {d.get('image_id')} ({d.get('file_name')}): cannot be loaded: {e}") from e
            if out is not None:
                return out
        raise DatasetError("the mapper dropped every training sample")


def build_loader(stream: TrainingStream, seed: int, start_iter: int = 0):
    """The position-addressed ``DataLoader`` of ``stream`` for this process (its share of each
    global batch), starting at batch ``start_iter``."""
    world = comm.get_world_size()
    if stream.total_batch_size % world:
        raise ValueError(f"{stream.batch_size_key} = {stream.total_batch_size} is not divisible by the number "
                         f"of processes ({world})")
    sampler = PositionBatchSampler(len(stream.dicts), stream.total_batch_size // world, seed, start=start_iter,
                                   rank=comm.get_rank(), world_size=world, **stream.plan)
    # Creating an iterator draws the workers' base seed from the loader's generator, or from
    # the global torch RNG when it has none. detectron2 main creates the trainer's iterator at
    # the first training step, i.e. after the iteration's reseeding: a draw from the global
    # RNG there would shift the model's random sampling in that step (in a resumed run, at
    # another step than in the straight run). Every sample reseeds itself, so the workers'
    # base seed does not change any batch; it comes from a generator of its own.
    generator = torch.Generator()
    generator.manual_seed(seed_from(seed, start_iter, comm.get_rank(), SALT_WORKER_BASE_SEED))
    return torch.utils.data.DataLoader(PositionSeededDataset(stream.dicts, stream.mapper, seed),
                                       batch_sampler=sampler, num_workers=stream.num_workers,
                                       collate_fn=trivial_batch_collator, generator=generator)


def checked_dataset_dicts(cfg, names):
    """detectron2's ``get_detection_dataset_dicts`` for ``names`` after the data checks: a
    malformed annotation file is an error naming it; degenerate boxes are dropped or clipped."""
    from detectron2.data import MetadataCatalog, get_detection_dataset_dicts

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


def stream_from_yacs(cfg, seed: int) -> TrainingStream:
    """A yacs config's training stream (``DATASETS.TRAIN``, ``DatasetMapper(cfg, True)``,
    ``SOLVER.IMS_PER_BATCH``, ``DATALOADER.*``); an unsupported ``SAMPLER_TRAIN`` is a ValueError."""
    from detectron2.data import DatasetMapper

    names = list(cfg.DATASETS.TRAIN)
    sizes = None
    if cfg.DATALOADER.SAMPLER_TRAIN.startswith("Weighted"):  # weights per dataset: load them one by one
        parts = [checked_dataset_dicts(cfg, [n]) for n in names]
        sizes = [len(p) for p in parts]
        dicts = [d for p in parts for d in p]
    else:
        dicts = checked_dataset_dicts(cfg, names)
    plan = training_plan_from_config(cfg, dicts, seed, dataset_sizes=sizes)
    return TrainingStream(dicts, DatasetMapper(cfg, True), int(cfg.SOLVER.IMS_PER_BATCH),
                          int(cfg.DATALOADER.NUM_WORKERS), plan)


def _target_name(node) -> str:
    t = node.get("_target_") if hasattr(node, "get") else None
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def stream_from_lazy(loader_cfg, seed: int) -> TrainingStream:
    """A LazyConfig ``dataloader.train`` node's training stream: its ``dataset`` (a list of
    dataset dicts), ``mapper``, ``total_batch_size``, ``num_workers``,
    ``aspect_ratio_grouping`` (default on) and ``sampler`` (detectron2's ``TrainingSampler``,
    ``RepeatFactorTrainingSampler(repeat_factors=...)`` or
    ``RandomSubsetTrainingSampler(subset_ratio=...)``; any other is a ValueError)."""
    from detectron2.config import instantiate

    dicts = instantiate(loader_cfg.dataset)
    if not isinstance(dicts, list):
        raise ValueError("exact resume needs dataloader.train.dataset to give a list of dataset dicts "
                         "(e.g. get_detection_dataset_dicts); set train.exact_resume=False otherwise")
    dicts = sanitize_boxes(dicts, "dataloader.train.dataset")
    plan = {"groups": aspect_groups(dicts) if loader_cfg.get("aspect_ratio_grouping", True) else None}
    sampler: Optional[Any] = loader_cfg.get("sampler", None)
    if sampler is not None:
        name = _target_name(sampler)
        if name == "RepeatFactorTrainingSampler":
            plan["repeat_factors"] = torch.as_tensor(instantiate(sampler.repeat_factors), dtype=torch.float64)
        elif name == "RandomSubsetTrainingSampler":
            plan["subset"] = random_subset(len(dicts), sampler.subset_ratio, seed,
                                           "dataloader.train.sampler.subset_ratio")
        elif name not in _LAZY_SAMPLERS:
            raise ValueError(
                f"dataloader.train.sampler = {name} is not supported by the exact-resume loader (supported: "
                f"{', '.join(_LAZY_SAMPLERS)}); set train.exact_resume=False to use detectron2's loader without "
                "exact resume"
            )
    return TrainingStream(dicts, instantiate(loader_cfg.mapper), int(loader_cfg.total_batch_size),
                          int(loader_cfg.get("num_workers", 0)), plan, "dataloader.train.total_batch_size")
