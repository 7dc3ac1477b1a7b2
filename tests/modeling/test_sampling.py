import pytest
import torch

from libra_d2.modeling.sampling import sample_instance_balanced_positives, sample_iou_balanced_negatives


@pytest.fixture(params=["numpy", "torch"])
def method(request):
    """Both implementations of the negative sampler (CPU numpy path, sync-free torch path)."""
    return request.param


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_contract(idx, candidates, num):
    assert idx.dtype == torch.int64
    assert idx.numel() == min(num, int(candidates.sum()))
    assert torch.unique(idx).numel() == idx.numel(), "an index was returned twice"
    assert bool(candidates[idx].all()), "a non-candidate was returned"


def random_case(seed, n=600):
    g = gen(seed)
    iou = torch.rand(n, generator=g) * 0.7
    iou[torch.rand(n, generator=g) < 0.4] = 0.0
    cand = (iou < 0.5) & (torch.rand(n, generator=g) < 0.9)
    return iou, cand


@pytest.mark.parametrize("num", [0, 1, 7, 64, 300, 10_000])
@pytest.mark.parametrize("floor_thresh,floor_fraction,k", [(-1, 0.0, 3), (0, 0.5, 3), (0.1, 0.3, 4), (-1, 0.0, 1), (0, 0.2, 1)])
def test_negatives_invariants(num, floor_thresh, floor_fraction, k, method):
    """Exact stage counts of the sampling semantics (docs/semantics.md) hold on random inputs for every branch."""
    for seed in range(4):
        iou, cand = random_case(seed)
        idx = sample_iou_balanced_negatives(
            iou, cand, num, num_bins=k, floor_thresh=floor_thresh, floor_fraction=floor_fraction, generator=gen(seed), method=method
        )
        check_contract(idx, cand, num)
        if floor_thresh > 0:
            in_iou = iou >= floor_thresh
        elif floor_thresh == 0:
            in_iou = iou > 0
        else:
            in_iou = torch.ones_like(cand)
        iou_set, floor_set = cand & in_iou, cand & ~in_iou
        n_cand = int(cand.sum())
        if n_cand <= num:
            continue
        n_iou = int(num * (1 - floor_fraction))
        taken_iou_stage = min(n_iou, int(iou_set.sum()))
        picked = torch.zeros_like(cand)
        picked[idx] = True
        # stage 3: the floor set gives exactly min(|floor|, num - taken_iou_stage)
        assert int((picked & floor_set).sum()) == min(int(floor_set.sum()), num - taken_iou_stage)
        assert int((picked & iou_set).sum()) >= taken_iou_stage
        if k > 1:
            lo, hi = max(floor_thresh, 0.0), float(iou.max())
            width = (hi - lo) / k
            for b in range(k):
                in_b = iou_set & (iou >= lo + b * width) & (iou < lo + (b + 1) * width)
                assert int((picked & in_b).sum()) >= min(n_iou // k, int(in_b.sum()))


def test_negatives_exact_bin_quotas(method):
    iou = torch.cat([torch.full((100,), 0.1), torch.full((100,), 0.5), torch.full((4,), 0.8), torch.tensor([1.0])])
    cand = iou < 1.0
    idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, generator=gen(), method=method)
    check_contract(idx, cand, 30)
    sel = iou[idx]
    # quotas 10/10/10; the top bin has only 4, so 6 come from the fill over bins 0 and 1
    assert int((sel == 0.8).sum()) == 4
    assert int((sel == 0.1).sum()) >= 10 and int((sel == 0.5).sum()) >= 10


def test_negatives_quota_without_fill_is_exact(method):
    iou = torch.cat([torch.full((100,), 0.1), torch.full((100,), 0.4), torch.full((100,), 0.7), torch.tensor([0.99])])
    cand = iou < 0.9
    idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, upper=0.9, generator=gen(), method=method)
    sel = iou[idx]
    assert [int((sel == v).sum()) for v in (0.1, 0.4, 0.7)] == [10, 10, 10]


def test_default_upper_is_max_iou_of_all_proposals(method):
    # with a positive at IoU 1.0 and negatives < 0.5, the top bin [2/3, 1) is empty (reference)
    iou = torch.cat([torch.full((10,), 0.4), torch.full((200,), 0.05), torch.tensor([1.0])])
    cand = iou < 0.5
    for seed in range(5):
        idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, generator=gen(seed), method=method)
        # 0.4 lies in bin 1 = [1/3, 2/3): its quota of 10 takes all ten
        assert int((iou[idx] == 0.4).sum()) == 10


def test_upper_moves_the_bins(method):
    iou = torch.cat([torch.full((10,), 0.15), torch.full((200,), 0.25), torch.tensor([0.9])])
    cand = iou < 0.5
    idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, upper=0.3, generator=gen(), method=method)
    assert int((iou[idx] == 0.15).sum()) == 10  # bin [0.1, 0.2) gets its full quota
    counts = [
        int((iou[sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, generator=gen(s), method=method)] == 0.15).sum())
        for s in range(10)
    ]
    assert max(counts) < 10  # upper = 0.9: one bin holds everything, 0.15 is rarely picked


def test_floor_thresh_minus_one_vs_zero(method):
    iou = torch.cat([torch.zeros(100), torch.full((100,), 0.4), torch.tensor([0.6])])
    cand = iou < 0.5
    idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, floor_thresh=-1, generator=gen(), method=method)
    assert int((iou[idx] == 0).sum()) >= 10  # zeros form bin 0 when there is no floor
    idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, floor_thresh=0, generator=gen(), method=method)
    assert int((iou[idx] == 0).sum()) == 0  # zeros are the floor set, fraction 0
    idx = sample_iou_balanced_negatives(iou, cand, 30, num_bins=3, floor_thresh=0, floor_fraction=0.5, generator=gen(), method=method)
    assert int((iou[idx] == 0).sum()) == 15


def test_positive_floor_thresh(method):
    iou = torch.cat([torch.full((100,), 0.05), torch.full((100,), 0.3)])
    cand = torch.ones(200, dtype=torch.bool)
    idx = sample_iou_balanced_negatives(iou, cand, 40, floor_thresh=0.1, floor_fraction=0.25, generator=gen(), method=method)
    assert int((iou[idx] == 0.05).sum()) == 10


def test_floor_shortfall_is_filled_from_iou_set(method):
    iou = torch.cat([torch.zeros(3), torch.full((100,), 0.3)])
    cand = torch.ones(103, dtype=torch.bool)
    idx = sample_iou_balanced_negatives(iou, cand, 40, floor_thresh=0, floor_fraction=0.5, generator=gen(), method=method)
    check_contract(idx, cand, 40)
    assert int((iou[idx] == 0).sum()) == 3


def test_one_bin_and_all_zero(method):
    iou = torch.zeros(500)
    cand = torch.ones(500, dtype=torch.bool)
    for k in (1, 3):
        idx = sample_iou_balanced_negatives(iou, cand, 100, num_bins=k, generator=gen(), method=method)
        check_contract(idx, cand, 100)


def test_fewer_candidates_than_asked_and_empty(method):
    iou = torch.rand(50)
    cand = torch.zeros(50, dtype=torch.bool)
    cand[:7] = True
    idx = sample_iou_balanced_negatives(iou, cand, 100, method=method)
    assert sorted(idx.tolist()) == list(range(7))
    assert sample_iou_balanced_negatives(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 10, method=method).numel() == 0
    assert sample_iou_balanced_negatives(iou, torch.zeros(50, dtype=torch.bool), 10, method=method).numel() == 0


def test_seed_repeatable(method):
    iou, cand = random_case(3)
    a = sample_iou_balanced_negatives(iou, cand, 100, generator=gen(7), method=method)
    b = sample_iou_balanced_negatives(iou, cand, 100, generator=gen(7), method=method)
    c = sample_iou_balanced_negatives(iou, cand, 100, generator=gen(8), method=method)
    assert torch.equal(a, b) and not torch.equal(a, c)
    gt = torch.randint(0, 5, (600,), generator=gen(1))
    a = sample_instance_balanced_positives(gt, cand, 20, generator=gen(7), method=method)
    b = sample_instance_balanced_positives(gt, cand, 20, generator=gen(7), method=method)
    assert torch.equal(a, b)


def test_bad_arguments():
    iou = torch.rand(10)
    cand = torch.ones(10, dtype=torch.bool)
    with pytest.raises(ValueError, match="num_bins"):
        sample_iou_balanced_negatives(iou, cand, 5, num_bins=0)
    with pytest.raises(ValueError, match="floor_fraction"):
        sample_iou_balanced_negatives(iou, cand, 5, floor_fraction=1.5)
    with pytest.raises(ValueError, match="candidates"):
        sample_iou_balanced_negatives(iou, cand[:5], 5)


def test_100k_proposals(method):
    g = gen(0)
    n = 100_000
    iou = torch.rand(n, generator=g) * 0.5
    iou[: n // 2] = 0
    cand = iou < 0.5
    idx = sample_iou_balanced_negatives(iou, cand, 512, generator=g, method=method)
    check_contract(idx, cand, 512)
    gt = torch.randint(0, 1000, (n,), generator=g)
    idx = sample_instance_balanced_positives(gt, cand, 128, generator=g, method=method)
    check_contract(idx, cand, 128)


# ---------------------------------------------------------------- positives


def test_positives_fill_is_exact(method):
    gt = torch.cat([torch.zeros(100), torch.ones(5), torch.full((5,), 2)]).long()
    cand = torch.ones(110, dtype=torch.bool)
    idx = sample_instance_balanced_positives(gt, cand, 30, generator=gen(), method=method)
    check_contract(idx, cand, 30)
    # G = 3, q = round(10) + 1 = 11: gt0 11, gt1 5, gt2 5, fill 9 from gt0
    assert torch.bincount(gt[idx], minlength=3).tolist() == [20, 5, 5]


def test_positives_excess_is_trimmed_with_half_to_even_quota(method):
    gt = torch.arange(4).repeat_interleave(50)
    cand = torch.ones(200, dtype=torch.bool)
    for seed in range(20):
        idx = sample_instance_balanced_positives(gt, cand, 10, generator=gen(seed), method=method)
        check_contract(idx, cand, 10)
        # q = round(2.5) + 1 = 3 (half to even); 12 taken, trimmed to 10
        assert int(torch.bincount(gt[idx], minlength=4).max()) <= 3


def test_positives_one_and_zero_gt(method):
    gt = torch.zeros(300, dtype=torch.long)
    cand = torch.rand(300, generator=gen()) < 0.5
    check_contract(sample_instance_balanced_positives(gt, cand, 40, generator=gen(), method=method), cand, 40)
    none = torch.zeros(300, dtype=torch.bool)
    assert sample_instance_balanced_positives(gt, none, 40, method=method).numel() == 0
    few = torch.zeros(300, dtype=torch.bool)
    few[[3, 9]] = True
    assert sorted(sample_instance_balanced_positives(gt, few, 40, method=method).tolist()) == [3, 9]


def test_positives_ignore_non_candidates_gt_ids(method):
    """Boxes matched only by non-candidates must not count as groups: with the two candidate
    boxes (3 and 60 positives) G = 2 and q = round(10 / 2) + 1 = 6, so box 0 gives all 3 and
    box 1 gives 6 + 1 filler = 7, on every draw. Counting the 8 boxes of the non-candidates
    too (G = 10, q = 2) would take 2 + 2 and fill 6 at random: box 0 mostly ends with 2."""
    gt = torch.cat([torch.zeros(3), torch.ones(60), torch.arange(2, 10).repeat(10)]).long()
    cand = torch.cat([torch.ones(63), torch.zeros(80)]).bool()
    for seed in range(10):
        idx = sample_instance_balanced_positives(gt, cand, 10, generator=gen(seed), method=method)
        check_contract(idx, cand, 10)
        assert torch.bincount(gt[idx], minlength=2).tolist()[:2] == [3, 7]
