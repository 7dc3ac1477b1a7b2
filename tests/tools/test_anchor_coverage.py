"""libra_d2.analysis.anchor_coverage on constructed boxes whose anchor IoUs are known by geometry, and the
tool on the built-in dataset."""
import json
import os
import subprocess
import sys

import pytest
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import BoxMode

from libra_d2.analysis.anchor_coverage import anchor_coverage, summarize_coverage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def image(boxes, h=64, w=64):
    return {"height": h, "width": w,
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1} for b in boxes]}


def test_coverage_of_boxes_with_known_anchor_iou():
    # one 32 px square anchor per 16 px cell, centred on the cell corners (offset 0)
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[16], offset=0.0)
    boxes = [[0, 0, 32, 32],   # exactly the anchor centred at (16, 16): IoU 1
             [0, 0, 32, 16],   # half of it: IoU 0.5 with two anchors (centres (16, 0) and (16, 16))
             [4, 4, 12, 12]]   # 8 x 8 inside one anchor: IoU 64 / 1024
    recs = anchor_coverage(gen, [16], [image(boxes)], fg_iou=0.5, min_size=64, max_size=64)
    assert [r["best_iou"] for r in recs] == pytest.approx([1.0, 0.5, 64 / 1024])
    assert [r["n_fg"] for r in recs] == [1, 2, 0]
    assert [r["low_quality"] for r in recs] == [False, False, True]
    assert [r["area"] for r in recs] == [1024, 512, 64]
    # the test resize scales the boxes with the image: at 2x the square is 64 px, IoU with a 32 px anchor 1/4
    recs2x = anchor_coverage(gen, [16], [image(boxes[:1])], fg_iou=0.5, min_size=128, max_size=1000)
    assert recs2x[0]["best_iou"] == pytest.approx(0.25) and recs2x[0]["area"] == 1024
    s = summarize_coverage(recs)
    assert s["small"]["boxes"] == 2 and s["medium"]["boxes"] == 1  # ranges are half-open: 32^2 is medium
    assert s["all"]["low_quality_frac"] == pytest.approx(1 / 3) and s["all"]["n_fg_median"] == 1.0
    with pytest.raises(ValueError, match="fg_iou"):
        anchor_coverage(gen, [16], [image(boxes)], fg_iou=0.0, min_size=64, max_size=64)


@pytest.mark.slow
def test_tool_on_builtin_retinanet_config(tmp_path, shapes_root):
    out = tmp_path / "cov.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools/anchor_coverage.py"), "--config-file",
           os.path.join(ROOT, "configs/builtin/retinanet_R_18_FPN_cpu.yaml"), "--dataset", "libra_shapes_val",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, DETECTRON2_DATASETS=shapes_root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = json.loads(out.read_text())["records"]
    assert record["provenance"]["commit"] and record["provenance"]["processor"]["model"]
    summary = record["summary"]
    assert summary["all"]["boxes"] == sum(summary[k]["boxes"] for k in ("small", "medium", "large")) > 0
    # from 16 px anchors at IoU 0.5, small objects are the ones left to the low-quality rule
    assert summary["small"]["low_quality_frac"] > summary["medium"]["low_quality_frac"]
    # a second run with other options adds a record; the same run again replaces its own
    for opts in (["MODEL.RETINANET.IOU_THRESHOLDS", "[0.4,0.5]"], []):
        proc = subprocess.run(cmd + ["--opts", *opts], capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env=dict(os.environ, DETECTRON2_DATASETS=shapes_root))
        assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert [r["fg_iou"] for r in records] == [0.5, 0.4]

