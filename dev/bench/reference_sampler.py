"""A faithful re-statement of the published IoU-balanced negative sampler, for benchmarks.

Written here from the published algorithm (Libra R-CNN's reference implementation): copy the
IoUs to the host, build Python sets for the floor / IoU / negative sets, intersect them,
then for each bin find its members with a numpy comparison, intersect with the negatives
and draw with ``torch.randperm``; leftovers come from set differences. Used only as the
"before" side of ``sampler_speedup_*``; libra_d2.modeling.sampling is the implementation.
"""
import numpy as np
import torch


def _random_choice(gallery, num):
    gallery = torch.as_tensor(np.asarray(list(gallery) if isinstance(gallery, (set, list)) else gallery), dtype=torch.long)
    perm = torch.randperm(gallery.numel())[:num]
    return gallery[perm].numpy()


def _sample_via_interval(max_overlaps, full_set, num_expected, floor_thr, num_bins):
    max_iou = max_overlaps.max()
    iou_interval = (max_iou - floor_thr) / num_bins
    per_num_expected = int(num_expected / num_bins)
    sampled = []
    for i in range(num_bins):
        start_iou = floor_thr + i * iou_interval
        end_iou = floor_thr + (i + 1) * iou_interval
        tmp_set = set(np.where(np.logical_and(max_overlaps >= start_iou, max_overlaps < end_iou))[0])
        tmp_inds = list(tmp_set & full_set)
        if len(tmp_inds) > per_num_expected:
            chosen = _random_choice(tmp_inds, per_num_expected)
        else:
            chosen = np.array(tmp_inds, dtype=np.int64)
        sampled.append(chosen)
    sampled = np.concatenate(sampled)
    if len(sampled) < num_expected:
        num_extra = num_expected - len(sampled)
        extra = np.array(list(full_set - set(sampled)))
        if len(extra) > num_extra:
            extra = _random_choice(extra, num_extra)
        sampled = np.concatenate([sampled, extra])
    return sampled


def reference_iou_balanced_negatives(max_iou, negatives, num_expected, floor_thr=-1.0, floor_fraction=0.0, num_bins=3):
    """Same inputs as libra_d2.modeling.sampling.sample_iou_balanced_negatives; returns int64 indices."""
    device = max_iou.device
    neg_inds = torch.nonzero(negatives).squeeze(1)
    if len(neg_inds) <= num_expected:
        return neg_inds
    max_overlaps = max_iou.cpu().numpy()
    neg_set = set(neg_inds.cpu().numpy())
    if floor_thr > 0:
        floor_set = set(np.where(np.logical_and(max_overlaps >= 0, max_overlaps < floor_thr))[0])
        iou_sampling_set = set(np.where(max_overlaps >= floor_thr)[0])
    elif floor_thr == 0:
        floor_set = set(np.where(max_overlaps == 0)[0])
        iou_sampling_set = set(np.where(max_overlaps > floor_thr)[0])
    else:
        floor_set = set()
        iou_sampling_set = set(np.where(max_overlaps > floor_thr)[0])
        floor_thr = 0
    floor_neg = list(floor_set & neg_set)
    iou_neg = list(iou_sampling_set & neg_set)
    n_iou = int(num_expected * (1 - floor_fraction))
    if len(iou_neg) > n_iou:
        if num_bins >= 2:
            iou_sampled = _sample_via_interval(max_overlaps, set(iou_neg), n_iou, floor_thr, num_bins)
        else:
            iou_sampled = _random_choice(iou_neg, n_iou)
    else:
        iou_sampled = np.array(iou_neg, dtype=np.int64)
    n_floor = num_expected - len(iou_sampled)
    if len(floor_neg) > n_floor:
        floor_sampled = _random_choice(floor_neg, n_floor)
    else:
        floor_sampled = np.array(floor_neg, dtype=np.int64)
    sampled = np.concatenate((floor_sampled, iou_sampled))
    if len(sampled) < num_expected:
        num_extra = num_expected - len(sampled)
        extra = np.array(list(neg_set - set(sampled)))
        if len(extra) > num_extra:
            extra = _random_choice(extra, num_extra)
        sampled = np.concatenate((sampled, extra))
    return torch.from_numpy(sampled.astype(np.int64)).to(device)
