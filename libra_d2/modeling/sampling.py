"""Libra R-CNN samplers as pure, vectorized functions (no nn.Module, no cfg).

Both samplers work on the proposals of one image. There is no Python loop over proposals
or ground-truth boxes and no Python set; "take k at random from a set" is a rank
comparison in a random order, so every quota and fill of the specification becomes a mask
or index operation.

The IoU-balanced negative sampler has two implementations of the same specification,
picked by the tensors' device (``method="auto"``):

* accelerators (``iou_balanced_negatives_select``): torch only, sync-free. Each bin's quota
  is a ``topk`` of i.i.d. uniform keys over the bin's members, the fill a ``topk`` of a
  second key vector over the members not yet taken; every count stays a tensor, so the one
  host read is the final index extraction. ``num`` may itself be a 0-d tensor.
* CPU tensors: the same stages on compact index arrays with numpy (nothing to synchronise
  with, and numpy's per-call cost is a fraction of torch's on arrays of a few thousand),
  seeded from the torch generator so SEED keeps runs repeatable.

The positive sampler (``instance_balanced_positives_mask``) is torch only and sync-free:
one random permutation ranks members inside their ground-truth group (a single int64 sort
on (group, random position)); a second, independent permutation trims or fills.

Semantics (docs/semantics.md, "IoU-balanced and instance-balanced sampling"):

* ``sample_instance_balanced_positives``: if there are more positives than ``num``, each of
  the G ground-truth boxes matched by positives gets ``q = round(num / G) + 1`` (Python's
  half-to-even round) random positives (all of them if it has fewer); a shortfall is filled
  with random positives not yet taken, an excess trimmed to a random ``num``.
* ``sample_iou_balanced_negatives``: floor set / IoU set split by ``floor_thresh``;
  ``n_iou = int(num * (1 - floor_fraction))`` drawn from the IoU set, ``int(n_iou / K)`` from
  each of K equal half-open bins over ``[max(floor_thresh, 0), upper)``, then filled up to
  ``n_iou`` from the IoU set; the rest from the floor set; any shortfall from the remaining
  negatives.

The quota and fill stages always use independent randomness, so "fill with random members
not yet taken" is uniform over those members (re-using the quota stage's order would bias
the fill against the bins whose quota was reached early).
"""
import threading
from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "resolve_sampler_method",
    "sample_iou_balanced_negatives",
    "sample_instance_balanced_positives",
    "iou_balanced_negatives_select",
    "instance_balanced_positives_mask",
    "random_subset_mask",
    "top_loss_mask",
]

Num = Union[int, torch.Tensor]


def _randperm(n: int, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randperm(n, device=device, generator=generator)


def _scatter_back(perm: torch.Tensor, mask_in_perm: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(mask_in_perm)
    out[perm] = mask_in_perm
    return out


def _check_1d(name, t, n=None):
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n}")


def random_subset_mask(candidates: torch.Tensor, num: Num, generator=None) -> torch.Tensor:
    """bool[N]: a uniformly random subset of ``candidates`` of size min(num, #candidates)."""
    n = candidates.numel()
    perm = _randperm(n, candidates.device, generator)
    c = candidates[perm]
    rank = torch.cumsum(c, 0)  # 1-based rank among members
    return _scatter_back(perm, c & (rank <= num))


def top_loss_mask(losses: torch.Tensor, candidates: torch.Tensor, num: Num) -> torch.Tensor:
    """bool[N]: the ``min(num, #candidates)`` candidates with the highest ``losses`` (online
    hard example mining). Ties go to the lower index (a stable descending sort), so the
    selection is deterministic; it draws no random numbers."""
    _check_1d("losses", losses, candidates.numel())
    key = torch.where(candidates, losses.detach().float(), torch.full_like(losses, float("-inf"), dtype=torch.float))
    order = torch.sort(key, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return candidates & (rank < num)


def instance_balanced_positives_mask(
    matched_gt: torch.Tensor, candidates: torch.Tensor, num: Num, generator=None
) -> torch.Tensor:
    """bool[N] mask form of :func:`sample_instance_balanced_positives` (``num`` may be a
    0-d tensor: no host read)."""
    n = candidates.numel()
    device = candidates.device
    if n == 0:
        return candidates.clone()
    # Stage 1: per ground-truth quota. Sort by (gt, random position) with one int64 key;
    # a member's rank inside its gt group is its sorted position minus the group start.
    perm = _randperm(n, device, generator)
    gt = matched_gt.to(torch.int64).clamp(min=0)
    # Non-candidates get the largest int64 key so they sort after every group (no host
    # read of the largest gt index needed).
    pos_in_perm = torch.empty_like(perm)
    pos_in_perm[perm] = torch.arange(n, device=device)
    key = gt * n + pos_in_perm
    key = torch.where(candidates, key, torch.full_like(key, torch.iinfo(torch.int64).max))
    sorted_key, order = torch.sort(key)
    sorted_gt = torch.div(sorted_key, n, rounding_mode="floor")
    group_start = torch.searchsorted(sorted_gt, sorted_gt)  # first index of each value
    rank_sorted = torch.arange(n, device=device) - group_start
    valid_sorted = candidates[order]
    num_groups = (valid_sorted & (rank_sorted == 0)).sum()
    num_t = torch.as_tensor(num, device=device, dtype=torch.float64)
    quota = torch.round(num_t / num_groups.clamp(min=1).to(torch.float64)) + 1
    tier0 = torch.zeros_like(candidates)
    tier0[order] = valid_sorted & (rank_sorted < quota)

    # Stage 2 (independent permutation): trim tier0 to a random `num`, or fill the
    # shortfall with random positives not yet taken.
    perm2 = _randperm(n, device, generator)
    t0 = tier0[perm2]
    rest = candidates[perm2] & ~t0
    ranks = torch.cumsum(torch.stack([t0, rest], dim=1), dim=0)  # 1-based
    c0 = ranks[-1, 0]
    num_i = torch.as_tensor(num, device=device)
    keep = (t0 & (ranks[:, 0] <= num_i)) | (rest & (ranks[:, 1] <= num_i - c0))
    return _scatter_back(perm2, keep)


def iou_balanced_negatives_select(
    max_iou: torch.Tensor,
    candidates: torch.Tensor,
    num: Num,
    *,
    num_bins: int = 3,
    floor_thresh: float = -1.0,
    floor_fraction: float = 0.0,
    upper: Optional[Union[float, torch.Tensor]] = None,
    max_num: Optional[int] = None,
    generator=None,
):
    """Lazy form of :func:`sample_iou_balanced_negatives`: returns ``(index, keep)``, two
    small 1-D tensors (length about ``2 * max_num``) such that ``index[keep]`` is the sample.

    ``num`` may be a 0-d tensor (no host read), in which case ``max_num`` (a Python int
    >= num) bounds the work. Each "take k at random from a set" is a ``topk`` of the set's
    members by i.i.d. uniform keys (non-members get key >= 2); the per-bin quotas use one
    key vector, the fills another, so the fill is uniform over the members not yet taken.
    """
    n = candidates.numel()
    device = candidates.device
    if max_num is None:
        max_num = int(num)
    kk = min(int(max_num), n)
    k = int(num_bins)
    if floor_thresh > 0:
        iou_set = candidates & (max_iou >= floor_thresh)
    elif floor_thresh == 0:
        iou_set = candidates & (max_iou > 0)
    else:
        iou_set = candidates
    num_t = torch.as_tensor(num, device=device)
    n_iou = torch.floor(num_t.to(torch.float64) * (1.0 - float(floor_fraction))).to(torch.int64)
    parts_idx, parts_keep = [], []
    tier0 = None
    if k > 1 and kk > 0:
        # stage 1: per-bin quota over K equal half-open bins [lo + i*w, lo + (i+1)*w)
        u = torch.rand(n, device=device, generator=generator)
        lo = max(float(floor_thresh), 0.0)
        hi = max_iou.max() if upper is None else torch.as_tensor(upper, dtype=max_iou.dtype, device=device)
        width = (hi - lo) / k
        b = ((max_iou - lo) / width).floor().clamp_(0, k - 1)
        # exact edges: the same comparisons the specification states
        b -= (max_iou < lo + b * width).to(b.dtype)
        b += (max_iou >= lo + (b + 1) * width).to(b.dtype)
        in_bin = iou_set & (max_iou >= lo) & (max_iou < hi)
        outside = (b.unsqueeze(0) != torch.arange(k, device=device, dtype=b.dtype).unsqueeze(1)) | ~in_bin
        keys = u + outside * 2.0  # [K, N]
        qk = min(int(max_num) // k, n)
        if qk > 0:
            vals, idx = torch.topk(keys, qk, dim=1, largest=False)
            quota = torch.div(n_iou, k, rounding_mode="floor")
            keep0 = (vals < 2) & (torch.arange(qk, device=device) < quota)
            idx, keep0 = idx.flatten(), keep0.flatten()
            tier0 = torch.zeros(n, dtype=torch.int32, device=device).index_put_((idx,), keep0.to(torch.int32), accumulate=True) > 0
            parts_idx.append(idx)
            parts_keep.append(keep0)
    c0 = parts_keep[0].sum() if parts_keep else torch.zeros((), dtype=torch.int64, device=device)

    # counts of the later stages, from set sizes only (no host read)
    n_iou_set = iou_set.sum()
    has_floor = floor_thresh >= 0
    n_floor = (candidates & ~iou_set).sum() if has_floor else torch.zeros_like(n_iou_set)
    take_total = torch.minimum(num_t, n_iou_set + n_floor)
    take_floor = torch.minimum(n_floor, num_t - torch.minimum(n_iou, n_iou_set))
    take_rest = take_total - take_floor - c0
    if kk > 0:
        # stages 2 + 4: members of the IoU set not yet taken, in one random order
        u2 = torch.rand(n, device=device, generator=generator)
        rest = iou_set if tier0 is None else iou_set & ~tier0
        vals, idx = torch.topk(u2 + (~rest) * 2.0, kk, largest=False)
        parts_idx.append(idx)
        parts_keep.append((vals < 2) & (torch.arange(kk, device=device) < take_rest))
        if has_floor:  # stage 3: the floor set (candidates below the floor threshold)
            vals, idx = torch.topk(u2 + (iou_set | ~candidates) * 2.0, kk, largest=False)
            parts_idx.append(idx)
            parts_keep.append((vals < 2) & (torch.arange(kk, device=device) < take_floor))
    if not parts_idx:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.bool()
    return torch.cat(parts_idx), torch.cat(parts_keep)


_LOCAL = threading.local()


def resolve_sampler_method(method: str, device) -> str:
    """The path a sampler takes: "numpy" or "torch". ``method`` "auto" picks numpy for CPU
    tensors (nothing to synchronise with) and the sync-free torch path on accelerators; an
    explicit "numpy" or "torch" is obeyed on any device ("numpy" copies accelerator tensors to
    the host). The one place this choice is made."""
    if method not in ("auto", "numpy", "torch"):
        raise ValueError(f"sampler method must be 'auto', 'numpy' or 'torch', got {method!r}")
    if method == "auto":
        return "numpy" if torch.device(device).type == "cpu" else "torch"
    return method


def _numpy_rng(generator):
    """A numpy Generator whose PCG64 state is set from two draws of the torch generator
    (cheap: no seeding hash), so torch's seed governs the numpy path too."""
    rng = getattr(_LOCAL, "rng", None)
    if rng is None:
        rng = _LOCAL.rng = np.random.Generator(np.random.PCG64(0))
        _LOCAL.template = rng.bit_generator.state
    a, b = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    state = dict(_LOCAL.template)
    state["state"] = {"state": (a << 64) | b, "inc": (b << 1) | 1}
    rng.bit_generator.state = state
    return rng


def _iou_balanced_negatives_numpy(max_iou, candidates, num, num_bins, floor_thresh, floor_fraction, upper, generator):
    """CPU path: the same stages on compact index arrays with numpy (no device to sync with,
    and numpy's per-call cost is a fraction of torch's on small arrays). Its randomness comes
    from a numpy Generator seeded by two draws from the torch generator, so SEED and
    ``generator`` keep runs repeatable."""
    iou = max_iou.detach().numpy()
    neg = candidates.numpy().nonzero()[0]
    if len(neg) <= num:
        return neg
    rng = _numpy_rng(generator)
    v = iou[neg]
    if floor_thresh > 0:
        in_iou = v >= floor_thresh
    elif floor_thresh == 0:
        in_iou = v > 0
    else:
        in_iou = None
    if in_iou is None:
        iou_idx, iou_v, floor_idx = neg, v, neg[:0]
    else:
        iou_idx, iou_v, floor_idx = neg[in_iou], v[in_iou], neg[~in_iou]
    n_iou = int(num * (1.0 - floor_fraction))
    m = len(iou_idx)
    taken = np.zeros(m, dtype=bool)
    if m <= n_iou:
        taken[:] = True
    elif num_bins == 1:
        taken[rng.choice(m, n_iou, replace=False)] = True
    else:
        dt = iou_v.dtype.type
        lo = dt(max(floor_thresh, 0.0))
        hi = iou.max() if upper is None else dt(upper)
        width = (hi - lo) / dt(num_bins)
        q = n_iou // num_bins
        for b in range(num_bins):  # K bins: a handful of vectorized passes each
            members = np.nonzero((iou_v >= lo + dt(b) * width) & (iou_v < lo + dt(b + 1) * width) & (iou_v < hi))[0]
            if len(members) > q:
                members = members[rng.choice(len(members), q, replace=False)]
            taken[members] = True
        rest = (~taken).nonzero()[0]
        need = n_iou - int(taken.sum())
        taken[rest[rng.choice(len(rest), need, replace=False)]] = True
    picked = iou_idx[taken]
    n_floor = min(len(floor_idx), num - len(picked))
    floor_pick = floor_idx[rng.choice(len(floor_idx), n_floor, replace=False)] if n_floor < len(floor_idx) else floor_idx
    short = num - len(picked) - len(floor_pick)
    parts = [picked, floor_pick]
    if short > 0:  # the floor set ran short: fill from the IoU set's members not yet taken
        left = iou_idx[~taken]
        parts.append(left[rng.choice(len(left), min(short, len(left)), replace=False)])
    return np.concatenate(parts)


def sample_iou_balanced_negatives(
    max_iou: torch.Tensor,
    candidates: torch.Tensor,
    num: int,
    *,
    num_bins: int = 3,
    floor_thresh: float = -1.0,
    floor_fraction: float = 0.0,
    upper: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    method: str = "auto",
) -> torch.Tensor:
    """IoU-balanced sampling of negatives for one image.

    Args:
        max_iou: float[N], largest IoU of each proposal with any ground-truth box (0 when
            the image has none), for *every* proposal of the image (positives included:
            the default top bin edge is ``max_iou.max()``).
        candidates: bool[N], the negatives.
        num: how many to sample.
        num_bins: K >= 1 equal IoU bins.
        floor_thresh: -1 (no floor set), 0 (IoU == 0 is the floor) or t > 0 (IoU < t).
        floor_fraction: share of ``num`` reserved for the floor set, in [0, 1].
        upper: top edge of the bins; None means ``max_iou.max()``.
        generator: torch.Generator on the inputs' device, for repeatable draws.
        method: "auto" (numpy on CPU tensors, the sync-free torch path elsewhere),
            "numpy" or "torch". Both implement the same specification.

    Returns:
        int64 indices into [0, N), no repeats, ``min(num, candidates.sum())`` of them
        (in no particular order).
    """
    _check_1d("max_iou", max_iou)
    _check_1d("candidates", candidates, max_iou.numel())
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if not (floor_thresh == -1 or 0 <= floor_thresh <= 1):
        raise ValueError(f"floor_thresh must be -1 or in [0, 1], got {floor_thresh}")
    if not 0 <= floor_fraction <= 1:
        raise ValueError(f"floor_fraction must be in [0, 1], got {floor_fraction}")
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if resolve_sampler_method(method, max_iou.device) == "numpy":
        idx = _iou_balanced_negatives_numpy(
            max_iou.cpu(), candidates.bool().cpu(), int(num), int(num_bins), float(floor_thresh), float(floor_fraction), upper, generator
        )
        return torch.from_numpy(idx).to(device=max_iou.device, dtype=torch.int64)
    idx, keep = iou_balanced_negatives_select(
        max_iou,
        candidates.bool(),
        num,
        num_bins=num_bins,
        floor_thresh=floor_thresh,
        floor_fraction=floor_fraction,
        upper=upper,
        generator=generator,
    )
    return idx[keep]


def _instance_balanced_positives_numpy(matched_gt, candidates, num, generator):
    """CPU path of the positive sampler: compact positives, group them by ground truth
    (sorting only the positives), same quota / trim / fill as the torch path."""
    pos = candidates.numpy().nonzero()[0]
    if len(pos) <= num:
        return pos
    rng = _numpy_rng(generator)
    _, group, counts = np.unique(matched_gt.numpy()[pos], return_inverse=True, return_counts=True)
    quota = round(num / len(counts)) + 1  # Python's round: half to even
    perm = rng.permutation(len(pos))
    order = perm[np.argsort(group[perm], kind="stable")]  # grouped, random inside each group
    rank = np.empty(len(pos), dtype=np.int64)
    rank[order] = np.arange(len(pos)) - np.repeat(np.cumsum(counts) - counts, counts)
    taken = rank < quota
    n0 = int(taken.sum())
    if n0 > num:  # trim to a random `num` of the quota picks
        picks = taken.nonzero()[0]
        taken[:] = False
        taken[rng.choice(picks, num, replace=False)] = True
    elif n0 < num:  # fill with random positives not yet taken
        rest = (~taken).nonzero()[0]
        taken[rng.choice(rest, num - n0, replace=False)] = True
    return pos[taken]


def sample_instance_balanced_positives(
    matched_gt: torch.Tensor,
    candidates: torch.Tensor,
    num: int,
    *,
    generator: Optional[torch.Generator] = None,
    method: str = "auto",
) -> torch.Tensor:
    """Instance-balanced sampling of positives for one image.

    Args:
        matched_gt: int64[N], index of the ground-truth box each proposal is matched to
            (any value for non-candidates).
        candidates: bool[N], the positives.
        num: how many to sample.
        generator: torch.Generator on the inputs' device, for repeatable draws.
        method: "auto" (numpy on CPU tensors, the sync-free torch path elsewhere),
            "numpy" or "torch".

    Returns:
        int64 indices into [0, N), no repeats, ``min(num, candidates.sum())`` of them
        (in no particular order).
    """
    _check_1d("matched_gt", matched_gt)
    _check_1d("candidates", candidates, matched_gt.numel())
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if resolve_sampler_method(method, matched_gt.device) == "numpy":
        idx = _instance_balanced_positives_numpy(matched_gt.cpu(), candidates.bool().cpu(), int(num), generator)
        return torch.from_numpy(idx).to(device=matched_gt.device, dtype=torch.int64)
    mask = instance_balanced_positives_mask(matched_gt, candidates.bool(), num, generator=generator)
    return torch.nonzero(mask).squeeze(1)
