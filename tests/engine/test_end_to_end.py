"""End to end through train_net.py: real DefaultTrainer, real COCO files, real COCOEvaluator."""
import json
import math
import os

import pytest

from tests.conftest import ROOT, TINY, run_train_net  # noqa: E402


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def batch_loss(shapes_root, cfg_path, weights):
    """Total training loss of a model on four fixed training images (no augmentation)."""
    import numpy as np
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from libra_d2.config import get_libra_cfg
    from libra_d2.data import register_libra_shapes

    register_libra_shapes(shapes_root)
    cfg = get_libra_cfg(cfg_path, TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    mapper = DatasetMapper(cfg, is_train=True)
    np.random.seed(0)  # the mapper's flip
    batch = [mapper(d) for d in DatasetCatalog.get("libra_shapes_train")[:8] if d["annotations"]]
    model.train()
    with torch.no_grad(), EventStorage():
        return float(sum(model(batch[:4]).values()))


def same_ap(a, b):
    for k in a["bbox"]:
        x, y = a["bbox"][k], b["bbox"][k]
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-6, (k, x, y)


@pytest.mark.slow
def test_libra_rcnn_trains_evaluates_and_eval_only_matches(shapes_root, tmp_path):
    out = str(tmp_path / "libra")
    cfg = os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml")
    run_train_net(shapes_root, "--config-file", cfg, *TINY, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "15", "OUTPUT_DIR", out)
    for f in ("config.yaml", "model_final.pth", "eval_results.json", "last_checkpoint"):
        assert os.path.isfile(os.path.join(out, f)), f
    with open(os.path.join(out, "eval_results.json")) as f:
        trained = json.load(f)
    assert set(trained["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    rows = [m for m in metrics(out) if "total_loss" in m]
    assert rows and "libra/neg_iou_mean" in rows[-1]
    # training lowered the loss: same fixed batch, random-init weights vs the trained ones
    untrained, trained_loss = batch_loss(shapes_root, cfg, None), batch_loss(shapes_root, cfg, os.path.join(out, "model_final.pth"))
    assert trained_loss < 0.8 * untrained, (untrained, trained_loss)

    out2 = str(tmp_path / "eval")
    run_train_net(shapes_root, "--config-file", cfg, "--eval-only", *TINY, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", out2)
    with open(os.path.join(out2, "eval_results.json")) as f:
        same_ap(trained, json.load(f))


@pytest.mark.slow
def test_libra_retinanet_trains_and_evaluates(shapes_root, tmp_path):
    out = str(tmp_path / "retina")
    cfg = os.path.join(ROOT, "configs/builtin/libra_retinanet_R_18_FPN_cpu.yaml")
    run_train_net(shapes_root, "--config-file", cfg, *TINY, "SOLVER.MAX_ITER", "12", "OUTPUT_DIR", out)
    with open(os.path.join(out, "eval_results.json")) as f:
        res = json.load(f)
    assert "AP" in res["bbox"]
    rows = [m for m in metrics(out) if "loss_box_reg" in m]
    assert rows and all(math.isfinite(m["loss_box_reg"]) for m in rows)


def test_bad_config_value_is_last_line_and_exit_code(shapes_root, tmp_path):
    proc = run_train_net(
        shapes_root, "--config-file", os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"),
        "MODEL.LIBRA.FLOOR_FRACTION", "1.5", "OUTPUT_DIR", str(tmp_path / "bad"), check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "MODEL.LIBRA.FLOOR_FRACTION = 1.5 is invalid" in last and "[0.0, 1.0]" in last
