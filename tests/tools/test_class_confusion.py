"""libra_d2.analysis.class_confusion / tools/class_confusion.py on constructed data whose answers are
known: right boxes with swapped classes are class-aware AP 0 and class-agnostic AP 100."""
import json
import os
import subprocess
import sys

from libra_d2.analysis.class_confusion import class_agnostic, confusion_matrix, diagnose
from tests.conftest import ROOT

GT = {
    "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
    "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "cross"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 40, 20], "area": 800, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 60, 20, 30], "area": 600, "iscrowd": 0},
    ],
}


def det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_swapped_classes_lose_class_aware_ap_only():
    swapped = [det(1, 7, [10, 10, 30, 30], 0.9), det(1, 3, [50, 50, 40, 20], 0.8), det(2, 3, [5, 60, 20, 30], 0.7)]
    out = diagnose(GT, swapped)
    assert out["class_aware"]["AP"] == 0.0
    assert abs(out["class_agnostic"]["AP"] - 100.0) < 1e-6
    assert out["confusion"]["matrix"] == [[0, 1, 0], [2, 0, 0]]  # circle -> cross; both crosses -> circle
    right = [dict(d, category_id={3: 7, 7: 3}[d["category_id"]]) for d in swapped]
    out = diagnose(GT, right)
    assert abs(out["class_aware"]["AP"] - 100.0) < 1e-6 and out["confusion"]["matrix"] == [[1, 0, 0], [0, 2, 0]]


def test_agnostic_nms_merges_classes_and_the_matrix_takes_the_best_score():
    dets = [det(1, 3, [10, 10, 30, 30], 0.4), det(1, 7, [11, 10, 30, 30], 0.6),  # one object, two classes
            det(1, 7, [70, 0, 10, 10], 0.3)]  # overlaps nothing
    merged = class_agnostic(dets)
    assert [d["score"] for d in merged] == [0.6, 0.3] and {d["category_id"] for d in merged} == {1}
    names, m = confusion_matrix(GT, dets)
    assert names == ["circle", "cross"]
    assert m.tolist() == [[0, 1, 0], [0, 0, 2]]  # the circle's best overlapping detection says cross; crosses missed


def test_tool_prints_both_aps_and_names_foreign_category_ids(tmp_path):
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(GT))
    res_path.write_text(json.dumps([det(1, 7, [10, 10, 30, 30], 0.9)]))
    tool = os.path.join(ROOT, "tools/class_confusion.py")
    proc = subprocess.run([sys.executable, tool, "--results", str(res_path), "--gt", str(gt_path), "--json",
                           str(tmp_path / "o.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "class-agnostic AP" in proc.stdout and json.loads((tmp_path / "o.json").read_text())["class_aware"]["AP"] == 0.0
    res_path.write_text(json.dumps([det(1, 0, [10, 10, 30, 30], 0.9)]))  # contiguous id 0: not a dataset id
    proc = subprocess.run([sys.executable, tool, "--results", str(res_path), "--gt", str(gt_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "category ids [0] are not in" in proc.stderr
