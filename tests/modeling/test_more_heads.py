"""Libra Mask R-CNN (masks on the balanced positives), Libra Cascade R-CNN and Libra Fast R-CNN
on precomputed proposals: unit checks and short train_net.py runs on real files."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks
from detectron2.utils.events import EventStorage

from tests.conftest import ROOT, TINY, inputs, run_train_net, small_heads


def test_mask_head_trains_on_the_balanced_positives(libra_cfg):
    _, heads = small_heads(libra_cfg, "MODEL.MASK_ON", True, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
                           "MODEL.ROI_MASK_HEAD.NUM_CONV", 1, "MODEL.LIBRA.POS_SAMPLER", "instance_balanced",
                           "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32)
    heads.train()
    images, features, props, targets = inputs(num_props=300)
    h, w = images.image_sizes[0]
    for t in targets:
        m = torch.zeros(len(t), h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(t.gt_boxes.tensor.round().long().tolist()):
            m[i, y0:y1, x0:x1] = True
        t.gt_masks = BitMasks(m)
    # one ground-truth box gets most of the positive proposals
    g = torch.Generator().manual_seed(3)
    jitter = torch.rand(120, 4, generator=g) * 6 - 3
    crowd = targets[0].gt_boxes.tensor[0] + jitter
    few = targets[0].gt_boxes.tensor[1] + jitter[:6]
    props[0].proposal_boxes.tensor = torch.cat([crowd, few, props[0].proposal_boxes.tensor[126:]])
    seen = {}
    sample_fn, mask_fwd = heads.label_and_sample_proposals, heads.mask_head.forward

    def record_sample(*a, **k):
        seen["sample"] = sample_fn(*a, **k)
        return seen["sample"]

    def record_mask(x, instances):
        seen["mask"] = instances
        return mask_fwd(x, instances)

    heads.label_and_sample_proposals = record_sample
    heads.mask_head.forward = record_mask
    torch.manual_seed(0)
    with EventStorage():
        _, losses = heads(images, features, props, targets)
    assert torch.isfinite(losses["loss_mask"])
    for sample, mask_inst in zip(seen["sample"], seen["mask"]):
        fg = sample[(sample.gt_classes >= 0) & (sample.gt_classes < heads.num_classes)]
        assert torch.equal(fg.proposal_boxes.tensor, mask_inst.proposal_boxes.tensor)
        assert mask_inst.has("gt_masks") or len(mask_inst) == 0
    # instance-balanced: of the 8 positive slots the box with 120 proposals does not take
    # (almost) all, as uniform sampling would (expected 7.6 of 8); the other keeps >= 3
    fg0 = seen["mask"][0]
    per_gt = torch.stack([(fg0.gt_boxes.tensor == b).all(1).sum() for b in targets[0].gt_boxes.tensor])
    assert int(per_gt.sum()) == 8 and int(per_gt[1]) >= 3, per_gt


@pytest.mark.slow
def test_builtin_mask_rcnn_trains_and_evaluates_bbox_and_segm(shapes_root, tmp_path):
    out = str(tmp_path / "mask")
    run_train_net(shapes_root, "--config-file", os.path.join(ROOT, "configs/builtin/libra_mask_rcnn_R_18_FPN_cpu.yaml"),
                  *TINY, "DATASETS.TEST", "('libra_shapes_segm_val_mini',)", "SOLVER.MAX_ITER", "6",
                  "TEST.DETECTIONS_PER_IMAGE", "20", "OUTPUT_DIR", out)
    with open(os.path.join(out, "eval_results.json")) as f:
        res = json.load(f)
    assert {"bbox", "segm"} <= set(res) and "AP" in res["segm"]
    # the masks are the visible regions: box = tight box of the mask, area = its pixels
    from detectron2.data import DatasetCatalog
    from pycocotools import mask as mask_util

    d = DatasetCatalog.get("libra_shapes_segm_val_mini")
    checked = 0
    for rec in d[:6]:
        for a in rec["annotations"]:
            m = mask_util.decode(a["segmentation"])
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == pytest.approx(list(a["bbox"]))
            checked += 1
    assert checked > 5


@pytest.mark.slow
def test_builtin_cascade_trains_and_evaluates(shapes_root, tmp_path):
    out = str(tmp_path / "cascade")
    run_train_net(shapes_root, "--config-file", os.path.join(ROOT, "configs/builtin/libra_cascade_rcnn_R_18_FPN_cpu.yaml"),
                  *TINY, "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", out)
    with open(os.path.join(out, "eval_results.json")) as f:
        assert "AP" in json.load(f)["bbox"]
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "loss_box_reg_stage2" in line]
    assert rows and all(np.isfinite(r["loss_box_reg_stage2"]) for r in rows)


@pytest.mark.slow
def test_dumped_proposals_load_back_and_train_fast_rcnn(shapes_root, tmp_path):
    from detectron2.data import get_detection_dataset_dicts

    from tools.dump_proposals import main as dump_main

    prop_dir = str(tmp_path / "proposals")
    written = dump_main(["--config-file", os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"),
                         "--dataset", "libra_shapes_val_mini", "--output-dir", prop_dir, "--opts", "MODEL.WEIGHTS", "",
                         "MODEL.DEVICE", "cpu"])
    path, data = written["libra_shapes_val_mini"]
    dicts = get_detection_dataset_dicts(["libra_shapes_val_mini"], filter_empty=False, proposal_files=[path])
    assert len(dicts) == len(data["ids"]) == 24
    by_id = dict(zip(data["ids"], data["boxes"]))
    for d in dicts:
        assert len(d["proposal_boxes"]) > 0
        # detectron2 re-sorts them by objectness: compare as sets of rows
        def rows(a):
            return a[np.lexsort(a.T[::-1])]

        np.testing.assert_array_equal(rows(d["proposal_boxes"]), rows(by_id[d["image_id"]]))
        assert d["proposal_boxes"][:, 2].max() <= d["width"] and d["proposal_boxes"][:, 3].max() <= d["height"]

    out = str(tmp_path / "fast")
    run_train_net(shapes_root, "--config-file", os.path.join(ROOT, "configs/builtin/libra_fast_rcnn_R_18_FPN_cpu.yaml"),
                  *TINY, "DATASETS.TRAIN", "('libra_shapes_val_mini',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{path}',)",
                  "DATASETS.PROPOSAL_FILES_TEST", f"('{path}',)", "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", out)
    with open(os.path.join(out, "eval_results.json")) as f:
        assert "AP" in json.load(f)["bbox"]
