"""Position-addressed training samplers: batch k of a run is a pure function of (seed, k).

This is what makes ``--resume`` exact (see :mod:`libra_d2.engine.trainer`) while keeping
detectron2's input pipeline options:

* **aspect-ratio grouping** (``DATALOADER.ASPECT_RATIO_GROUPING``): every batch holds images
  of one group, "landscape" (width > height) or not, as detectron2's grouping does, read
  from the dataset dicts' ``width``/``height``;
* **repeat-factor sampling** (``SAMPLER_TRAIN: RepeatFactorTrainingSampler`` with
  ``REPEAT_THRESHOLD`` and, where detectron2 has it, ``REPEAT_SQRT``; detectron2 main's
  ``WeightedTrainingSampler`` / ``WeightedCategoryTrainingSampler`` with
  ``DATASETS.TRAIN_REPEAT_FACTOR``): per epoch each image appears ``floor(r)`` times plus once
  more with probability ``frac(r)`` (stochastic rounding, seeded per epoch), as in detectron2;
* **random subsets** (``RandomSubsetTrainingSampler``, ``DATALOADER.RANDOM_SUBSET_RATIO``):
  a seeded subset of ``int(N * ratio)`` images, reshuffled every epoch.

Construction. Each group g has its own infinite stream: its epoch e is the group's images
(expanded by the repeat factors when those are used) in an order drawn from a generator
seeded with (seed, e[, g]). Global batch k is assigned to a group by a seeded draw with
probability proportional to the group's share of the images (of the expected repeats), so
over a run every image is visited equally often (in proportion to its repeat factor); if
the group has had c batches before k, batch k takes the group stream's positions
``[c * B * W, (c + 1) * B * W)``, rank r the r-th block of B. All of this is computed from
(seed, k) alone, so a loader started at batch k continues a run exactly; the number of
DataLoader workers does not change any batch. With one group and no repeat factors the
stream is exactly the plain one: sample p of the run is image ``perm_e[p mod N]``.

The stream position of each sample (``(k * W + r) * B + i``) also seeds its augmentation.
"""
import math
from collections import defaultdict
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..utils.seeding import SALT_GROUP_DRAWS, SALT_RANDOM_SUBSET, SALT_REPEAT_FACTORS, seed_from
from .checks import DatasetError

__all__ = [
    "SUPPORTED_SAMPLERS", "PositionBatchSampler", "aspect_groups", "category_repeat_factors",
    "training_plan_from_config", "random_subset",
]

SUPPORTED_SAMPLERS = (
    "TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler", "WeightedTrainingSampler",
    "WeightedCategoryTrainingSampler",
)
_BLOCK = 4096  # batches per block of group draws


def _generator(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def aspect_groups(dicts) -> torch.Tensor:
    """Group id per image: 0 if width > height (landscape), else 1 (detectron2's buckets)."""
    out = torch.empty(len(dicts), dtype=torch.long)
    for i, d in enumerate(dicts):
        w, h = d.get("width"), d.get("height")
        if not w or not h:
            raise DatasetError(
                f"image id {d.get('image_id')} ({d.get('file_name')}): no width/height in its dataset dict, which "
                "DATALOADER.ASPECT_RATIO_GROUPING needs to group images before loading them; add them to the "
                "annotations or set DATALOADER.ASPECT_RATIO_GROUPING False"
            )
        out[i] = 0 if w > h else 1
    return out


def category_repeat_factors(dicts, repeat_thresh: float, sqrt: bool = True) -> torch.Tensor:
    """LVIS repeat factors (detectron2's definition): f(c) = fraction of images containing
    category c, r(c) = max(1, t / f(c)) (its square root when ``sqrt``), r(image) = max over
    its categories (1 for an image without annotations). Not detectron2's
    ``repeat_factors_from_category_frequency``: that one returns float32 (this stream's
    stochastic rounding reads float64 factors; float32 would move every repeat-factor run) and
    0.6's has no ``sqrt`` switch."""
    freq = defaultdict(int)
    cats = [{a["category_id"] for a in d.get("annotations", [])} for d in dicts]
    for cs in cats:
        for c in cs:
            freq[c] += 1
    n = len(dicts)
    rep = {}
    for c, k in freq.items():
        r = repeat_thresh / (k / n)
        rep[c] = max(1.0, math.sqrt(r) if sqrt else r)
    return torch.tensor([max((rep[c] for c in cs), default=1.0) for cs in cats], dtype=torch.float64)


class _GroupStream:
    """Infinite, position-addressed stream of dataset indices over one group's members."""

    def __init__(self, members: torch.Tensor, seed: int, gid: int, factors: Optional[torch.Tensor], shuffle: bool):
        self.members, self.seed, self.gid, self.shuffle = members, seed, gid, shuffle
        self.factors = factors  # per member, or None
        self._epoch_starts = [0]  # cumulative epoch lengths (repeat factors: they vary)
        self._cache = {}

    def _epoch(self, e):
        if e in self._cache:
            return self._cache[e]
        items = self.members
        if self.factors is not None:
            g = _generator(seed_from(self.seed, SALT_REPEAT_FACTORS, self.gid, e))
            ints = torch.floor(self.factors)
            reps = ints + (torch.rand(len(self.factors), generator=g, dtype=torch.float64) < self.factors - ints)
            items = torch.repeat_interleave(self.members, reps.long())
        if self.shuffle and len(items):
            # group 0 of a plain stream uses seed (seed, e): the stream of a single group
            # without repeats is the plain one
            s = seed_from(self.seed, e) if self.gid == 0 and self.factors is None else seed_from(self.seed, e, self.gid)
            items = items[torch.randperm(len(items), generator=_generator(s))]
        if len(self._cache) > 4:
            self._cache.pop(min(self._cache))
        self._cache[e] = items
        return items

    def _locate(self, q):
        if self.factors is None:
            n = len(self.members)
            return q // n, q % n
        while self._epoch_starts[-1] <= q:
            e = len(self._epoch_starts) - 1
            length = len(self._epoch(e))
            if length == 0:
                raise DatasetError("repeat-factor sampling produced an empty epoch")
            self._epoch_starts.append(self._epoch_starts[-1] + length)
        e = int(np.searchsorted(self._epoch_starts, q, side="right")) - 1
        return e, q - self._epoch_starts[e]

    def take(self, q0, n) -> List[int]:
        out = []
        for q in range(q0, q0 + n):
            e, j = self._locate(q)
            out.append(int(self._epoch(e)[j]))
        return out


class PositionBatchSampler(torch.utils.data.Sampler):
    """Infinite batches of (stream position, dataset index) pairs for one rank (module doc).

    Args:
        size: number of dataset dicts.
        batch_size: images per batch on this rank (B); ``world_size`` ranks make a global batch.
        seed: the run's base seed. ``start``: first global batch index (resume).
        groups: optional group id per image (e.g. :func:`aspect_groups`): one group per batch.
        repeat_factors: optional float repeat factor per image (>= 0).
        subset: optional tensor of the dataset indices to sample from (others never used).
    """

    def __init__(self, size, batch_size, seed, start=0, shuffle=True, rank=0, world_size=1, groups=None,
                 repeat_factors=None, subset=None):
        if size <= 0:
            raise DatasetError("the training set is empty (after filtering images without usable annotations)")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.shuffle, self.rank, self.world_size = start, shuffle, rank, world_size
        members = torch.arange(size) if subset is None else torch.as_tensor(subset, dtype=torch.long)
        gids = torch.zeros(size, dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
        factors = None if repeat_factors is None else torch.as_tensor(repeat_factors, dtype=torch.float64)
        if factors is not None and (len(factors) != size or not torch.isfinite(factors).all() or (factors < 0).any()):
            raise ValueError("repeat factors must be one finite value >= 0 per image")
        self.streams, weights = [], []
        for g in sorted(set(gids[members].tolist())):
            m = members[gids[members] == g]
            f = None if factors is None else factors[m]
            mass = float(len(m)) if f is None else float(f.sum())
            if mass <= 0:
                continue
            self.streams.append(_GroupStream(m, seed, g, f, shuffle))
            weights.append(mass)
        if not self.streams:
            raise DatasetError("no image can be sampled (all repeat factors are 0)")
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.group_ids = [s.gid for s in self.streams]

    # -- group of each global batch
    def _block(self, b):
        if len(self.streams) == 1:
            return torch.zeros(_BLOCK, dtype=torch.long)
        return torch.multinomial(self.weights, _BLOCK, replacement=True, generator=_generator(seed_from(self.seed, SALT_GROUP_DRAWS, b)))

    def _counts_before(self, k):
        """Batches of each group among global batches [0, k)."""
        counts = torch.zeros(len(self.streams), dtype=torch.long)
        full, part = divmod(k, _BLOCK)
        for b in range(full):
            counts += torch.bincount(self._block(b), minlength=len(self.streams))
        if part:
            counts += torch.bincount(self._block(full)[:part], minlength=len(self.streams))
        return counts

    def __iter__(self):
        k = self.start
        counts = self._counts_before(k)
        block_id, block = None, None
        gb = self.batch_size * self.world_size
        while True:
            if k // _BLOCK != block_id:
                block_id, block = k // _BLOCK, self._block(k // _BLOCK)
            s = int(block[k % _BLOCK])
            q0 = int(counts[s]) * gb + self.rank * self.batch_size
            idx = self.streams[s].take(q0, self.batch_size)
            first = (k * self.world_size + self.rank) * self.batch_size
            yield [(first + i, j) for i, j in enumerate(idx)]
            counts[s] += 1
            k += 1


def _dataset_repeat_factors(cfg, names: Sequence[str], sizes: Sequence[int]) -> torch.Tensor:
    pairs = cfg.DATASETS.get("TRAIN_REPEAT_FACTOR", [])
    table = {}
    for item in pairs:
        if len(item) != 2:
            raise ValueError(f"DATASETS.TRAIN_REPEAT_FACTOR entries must be (dataset name, factor) pairs, got {item!r}")
        table[item[0]] = float(item[1])
    unknown = set(table) - set(names)
    if unknown:
        raise ValueError(f"DATASETS.TRAIN_REPEAT_FACTOR names datasets that are not in DATASETS.TRAIN: {sorted(unknown)}")
    return torch.cat([torch.full((n,), table.get(name, 1.0), dtype=torch.float64) for name, n in zip(names, sizes)])


def training_plan_from_config(cfg, dicts, seed, dataset_sizes=None):
    """The sampler options of ``cfg`` as keyword arguments of :class:`PositionBatchSampler`
    (``groups``, ``repeat_factors``, ``subset``), or a ValueError naming an unsupported
    sampler. ``seed``: the run's base seed (draws the random subset). ``dataset_sizes``:
    images per name of ``DATASETS.TRAIN`` (for the Weighted* samplers, which weight whole
    datasets)."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name not in SUPPORTED_SAMPLERS:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN = {name!r} is not supported by the exact-resume loader "
            f"(supported: {', '.join(SUPPORTED_SAMPLERS)}); set DATALOADER.EXACT_RESUME False to use "
            "detectron2's loader without exact resume"
        )
    out = {"groups": aspect_groups(dicts) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None,
           "repeat_factors": None, "subset": None}
    sqrt = bool(cfg.DATALOADER.get("REPEAT_SQRT", True))
    if name == "RepeatFactorTrainingSampler":
        out["repeat_factors"] = category_repeat_factors(dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt)
    elif name in ("WeightedTrainingSampler", "WeightedCategoryTrainingSampler"):
        names = list(cfg.DATASETS.TRAIN)
        sizes = dataset_sizes or [len(dicts)]
        if sum(sizes) != len(dicts) or len(sizes) != len(names):
            raise ValueError(f"{name} needs the number of images of each training dataset")
        factors = _dataset_repeat_factors(cfg, names, sizes)
        if name == "WeightedCategoryTrainingSampler":
            parts, start = [], 0
            for n in sizes:  # category frequencies per dataset, as detectron2 computes them
                parts.append(category_repeat_factors(dicts[start:start + n], cfg.DATALOADER.REPEAT_THRESHOLD, sqrt))
                start += n
            factors = factors * torch.cat(parts)
            factors = factors / factors.min()
        out["repeat_factors"] = factors
    elif name == "RandomSubsetTrainingSampler":
        out["subset"] = random_subset(len(dicts), cfg.DATALOADER.get("RANDOM_SUBSET_RATIO", None), seed,
                                      "DATALOADER.RANDOM_SUBSET_RATIO")
    return out


def random_subset(size: int, ratio, seed: int, key: str = "subset_ratio") -> torch.Tensor:
    """The images of a ``RandomSubsetTrainingSampler`` run: ``int(size * ratio)`` indices drawn
    from the run's base ``seed`` (the same subset on resume). ``key`` names the setting in errors."""
    if ratio is None or isinstance(ratio, bool) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"RandomSubsetTrainingSampler needs {key} in (0, 1], got {ratio!r}")
    n = int(size * float(ratio))
    if n <= 0:
        raise ValueError(f"{key} = {ratio} selects no image out of {size}")
    return torch.randperm(size, generator=_generator(seed_from(seed, SALT_RANDOM_SUBSET)))[:n]
