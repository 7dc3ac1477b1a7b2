"""Position-addressed samplers (libra_d2.data.samplers): plain stream, aspect-ratio grouping,
repeat factors, random subsets, resume at any batch, worker independence, clear errors."""
import itertools
import math

import pytest
import torch

from libra_d2.data.samplers import (
    PositionBatchSampler,
    aspect_groups,
    category_repeat_factors,
    seed_from,
    training_plan_from_config,
)


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_plain_stream_is_a_seeded_permutation_per_epoch():
    n, b, seed = 10, 3, 5
    batches = take(PositionBatchSampler(n, b, seed), 12)
    flat = [x for batch in batches for x in batch]
    for p, (pos, idx) in enumerate(flat):
        e = p // n
        g = torch.Generator()
        g.manual_seed(seed_from(seed, e))
        assert pos == p and idx == int(torch.randperm(n, generator=g)[p % n])


@pytest.mark.parametrize("kwargs", [
    {},
    {"groups": [0, 1] * 20},
    {"repeat_factors": [1.0, 2.5, 0.3, 1.7] * 10},
    {"groups": [0, 0, 1] * 13 + [1], "repeat_factors": [1.0, 3.2] * 20},
    {"subset": [3, 7, 11, 20, 21, 30]},
])
def test_starting_at_batch_k_continues_the_run_exactly(kwargs):
    full = take(PositionBatchSampler(40, 4, 9, **kwargs), 60)
    for k in (1, 17, 59):
        assert take(PositionBatchSampler(40, 4, 9, start=k, **kwargs), 60 - k) == full[k:]


def test_grouping_gives_single_group_batches_and_visits_images_evenly():
    groups = torch.tensor([0] * 70 + [1] * 30)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    s = PositionBatchSampler(100, 4, 1, groups=groups)
    counts = torch.zeros(100)
    n_batches = 2500
    for k, batch in enumerate(take(s, n_batches)):
        assert len({int(groups[i]) for _, i in batch}) == 1, (k, batch)
        for _, i in batch:
            counts[i] += 1
    # each image once per pass of its group: counts are (almost) equal for all images
    mean = counts.mean()
    assert abs(counts[groups == 0].mean() - mean) < 0.05 * mean
    assert abs(counts[groups == 1].mean() - mean) < 0.05 * mean
    assert counts.max() - counts.min() <= 0.12 * mean


def test_ranks_of_one_global_batch_share_the_group_and_split_it():
    groups = [0, 1, 1] * 20
    ranks = [take(PositionBatchSampler(60, 2, 3, rank=r, world_size=3, groups=groups), 50) for r in range(3)]
    for k in range(50):
        parts = [ranks[r][k] for r in range(3)]
        assert len({groups[i] for part in parts for _, i in part}) == 1
        positions = [p for part in parts for p, _ in part]
        assert positions == list(range(k * 6, (k + 1) * 6))


def test_repeat_factor_frequencies_match_detectron2_expectation():
    """Per-image sampling frequency -> r_i / sum(r) (detectron2's RepeatFactorTrainingSampler:
    floor(r) copies plus one with probability frac(r), every epoch)."""
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    factors = torch.tensor([1.0, 1.3, 2.0, 2.7, 0.5, 4.0, 1.0, 1.5] * 5, dtype=torch.float64)
    s = PositionBatchSampler(len(factors), 8, 0, repeat_factors=factors)
    n = 40000
    counts = torch.zeros(len(factors), dtype=torch.float64)
    for batch in take(s, n // 8):
        for _, i in batch:
            counts[i] += 1
    expected = factors / factors.sum() * n
    # binomial sampling error of each count (plus the rounding's own variance): 5 sigma
    sigma = torch.sqrt(expected * (1 - factors / factors.sum())) + 3
    assert ((counts - expected).abs() <= 5 * sigma).all(), (counts, expected)
    # detectron2's own sampler, same factors: same expected shares (checked on its stream)
    d2 = RepeatFactorTrainingSampler(factors.float(), seed=0)
    d2_counts = torch.bincount(torch.tensor(list(itertools.islice(iter(d2), n))), minlength=len(factors)).double()
    assert ((d2_counts - expected).abs() <= 5 * sigma).all()


def test_category_repeat_factors_equal_detectron2s():
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    dicts = [{"annotations": [{"category_id": c} for c in cats]}
             for cats in ([1], [1, 2], [1], [3], [1, 3], [], [1], [2, 4])]
    ours = category_repeat_factors(dicts, 0.5)
    theirs = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    torch.testing.assert_close(ours.float(), theirs.float())
    assert ours.max() > 1.0  # rare categories are repeated


def test_subset_only_samples_its_members():
    subset = [2, 5, 9, 14]
    seen = {i for batch in take(PositionBatchSampler(20, 2, 0, subset=subset), 40) for _, i in batch}
    assert seen == set(subset)


def _cfg(libra_cfg, *opts):
    return libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", *opts)


def test_plan_from_config_and_clear_errors(libra_cfg):
    dicts = [{"width": 320, "height": 256, "annotations": [{"category_id": 1}]},
             {"width": 256, "height": 320, "annotations": [{"category_id": 2}]}] * 5
    plan = training_plan_from_config(_cfg(libra_cfg), dicts, 0)
    assert plan["groups"].tolist() == [0, 1] * 5 and plan["repeat_factors"] is None
    cfg = _cfg(libra_cfg, "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", 0.9)
    assert plan["groups"] is not None and training_plan_from_config(cfg, dicts, 0)["repeat_factors"] is not None
    cfg = _cfg(libra_cfg, "DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler")
    cfg.DATALOADER.RANDOM_SUBSET_RATIO = 0.5
    assert len(training_plan_from_config(cfg, dicts, 0)["subset"]) == 5
    cfg.DATALOADER.RANDOM_SUBSET_RATIO = 1.5
    with pytest.raises(ValueError, match="RANDOM_SUBSET_RATIO"):
        training_plan_from_config(cfg, dicts, 0)
    with pytest.raises(ValueError, match="'MySampler' is not supported"):
        training_plan_from_config(_cfg(libra_cfg, "DATALOADER.SAMPLER_TRAIN", "MySampler"), dicts, 0)
    with pytest.raises(Exception, match="no width/height"):
        aspect_groups([{"image_id": 3, "file_name": "x.jpg"}])
    # weighted: dataset-level factors
    cfg = _cfg(libra_cfg, "DATALOADER.SAMPLER_TRAIN", "WeightedTrainingSampler", "DATASETS.TRAIN", "('a', 'b')")
    cfg.DATASETS.TRAIN_REPEAT_FACTOR = [["b", 3.0]]
    rf = training_plan_from_config(cfg, dicts, 0, dataset_sizes=[4, 6])["repeat_factors"]
    assert rf.tolist() == [1.0] * 4 + [3.0] * 6


def test_trainer_rejects_unsupported_sampler(libra_cfg, shapes_root, tmp_path):
    from libra_d2.engine import LibraTrainer

    cfg = _cfg(libra_cfg, "DATALOADER.SAMPLER_TRAIN", "MySampler", "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="MySampler"):
        LibraTrainer(cfg)


def test_loader_batches_do_not_depend_on_workers(libra_cfg, shapes_root, tmp_path):
    """NUM_WORKERS 0 and 2: the same images, flips and crops, batch for batch (mixed-aspect
    data, grouping on)."""
    from libra_d2.engine import LibraTrainer

    out = []
    for workers in (0, 2):
        cfg = _cfg(libra_cfg, "DATASETS.TRAIN", "('libra_shapes_mixed_train',)", "DATALOADER.NUM_WORKERS", workers,
                   "SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", str(tmp_path / str(workers)), "SEED", 3)
        trainer = LibraTrainer(cfg)
        batches = list(itertools.islice(iter(trainer._exact_loader(cfg, start_iter=5)), 6))
        out.append(batches)
    for a, b in zip(*out):
        assert [d["file_name"] for d in a] == [d["file_name"] for d in b]
        assert len({d["image"].shape[1] > d["image"].shape[2] for d in a}) == 1  # one aspect group per batch
        for x, y in zip(a, b):
            assert torch.equal(x["image"], y["image"])
            assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
    assert math.isclose(len(out[0]), 6)
