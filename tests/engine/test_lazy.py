"""LazyConfig support: configs/lazy/*.py instantiate, equal their yacs twins module by module
and output by output, train/evaluate/resume exactly through train_net.py, and reject bad
values with the yacs path's message."""
import json
import os
import shutil

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from tests.conftest import ROOT, run_train_net

PAIRS = {
    "libra_rcnn_R_18_FPN_builtin.py": "builtin/libra_rcnn_R_18_FPN_cpu.yaml",
    "libra_faster_rcnn_R_50_FPN_1x.py": "COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml",
    "libra_retinanet_R_50_FPN_1x.py": "COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml",
    "libra_mask_rcnn_R_50_FPN_1x.py": "COCO-InstanceSegmentation/libra_mask_rcnn_R_50_FPN_1x.yaml",
}
BUILTIN = os.path.join(ROOT, "configs/lazy/libra_rcnn_R_18_FPN_builtin.py")


def _folder_resuming_from(out, checkpoint, folder):
    """A fresh output folder whose last checkpoint is ``out/checkpoint`` (what --resume reads)."""
    folder = str(folder)
    os.makedirs(folder)
    shutil.copy(os.path.join(out, checkpoint), folder)
    with open(os.path.join(folder, "last_checkpoint"), "w") as f:
        f.write(checkpoint)
    return folder


def lazy_model(name):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/lazy", name))
    return instantiate(cfg.model)


@pytest.mark.parametrize("name", list(PAIRS))
def test_lazy_model_equals_its_yacs_twin(libra_cfg, name):
    torch.manual_seed(0)
    yacs = build_model(libra_cfg(PAIRS[name], "MODEL.WEIGHTS", "")).eval()
    lazy = lazy_model(name).eval()
    # same module tree: names and types
    assert [(n, type(m)) for n, m in yacs.named_modules()] == [(n, type(m)) for n, m in lazy.named_modules()]
    # same parameters and buffers: names, shapes, trainability
    ys, ls = yacs.state_dict(), lazy.state_dict()
    assert [(k, v.shape) for k, v in ys.items()] == [(k, v.shape) for k, v in ls.items()]
    assert [(n, p.requires_grad) for n, p in yacs.named_parameters()] == \
        [(n, p.requires_grad) for n, p in lazy.named_parameters()]
    # same hyper-parameters where they live on the modules
    for attr in ("pos_sampler", "neg_sampler", "num_bins", "batch_size_per_image", "neg_bin_upper"):
        if hasattr(yacs, "roi_heads") and hasattr(yacs.roi_heads, attr):
            assert getattr(yacs.roi_heads, attr) == getattr(lazy.roi_heads, attr), attr
    # same outputs for the same weights: pyramid features, then the detections (as sets: with
    # random weights many scores tie, and tied rows may come in any order)
    lazy.load_state_dict(ys)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 224, 288, generator=g) * 255
    with torch.no_grad():
        fa = yacs.backbone(yacs.preprocess_image([{"image": image}]).tensor)
        fb = lazy.backbone(lazy.preprocess_image([{"image": image}]).tensor)
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
        a = yacs([{"image": image}])[0]["instances"]
        b = lazy([{"image": image}])[0]["instances"]
    assert len(a) > 0

    def rows(inst):
        t = torch.cat([inst.scores[:, None], inst.pred_classes[:, None].float(), inst.pred_boxes.tensor], 1)
        if inst.has("pred_masks"):
            t = torch.cat([t, inst.pred_masks.flatten(1).float().sum(1, keepdim=True)], 1)
        return sorted(map(tuple, t.tolist()))

    assert rows(a) == rows(b)
    assert a.has("pred_masks") == b.has("pred_masks") == ("mask" in name)


def test_builtin_lazy_config_trains_evaluates_and_resumes_exactly(shapes_root, tmp_path):
    out = str(tmp_path / "straight")
    opts = ["train.max_iter=8", "train.checkpointer.period=4", "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            "dataloader.test.dataset.names=libra_shapes_val_mini", "model.roi_heads.batch_size_per_image=64",
            "train.seed=3"]
    proc = run_train_net(shapes_root, "--config-file", BUILTIN, *opts, f"train.output_dir={out}")
    for f in ("config.yaml", "model_0000003.pth", "model_final.pth", "eval_results.json", "last_checkpoint"):
        assert os.path.isfile(os.path.join(out, f)), f
    # evaluated once at the end (detectron2's EvalHook), as lazyconfig_train_net.py does
    assert (proc.stdout + proc.stderr).count("Start inference on") == 1
    with open(os.path.join(out, "eval_results.json")) as f:
        assert set(json.load(f)["bbox"]) >= {"AP", "AP50", "AP75"}

    # resume from the iteration-4 checkpoint in a fresh folder: same final weights
    resumed = _folder_resuming_from(out, "model_0000003.pth", tmp_path / "resumed")
    run_train_net(shapes_root, "--config-file", BUILTIN, "--resume", *opts, f"train.output_dir={resumed}")
    a = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    b = torch.load(os.path.join(resumed, "model_final.pth"), map_location="cpu", weights_only=False)
    assert a["iteration"] == b["iteration"] == 7
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5, rtol=1e-4), k
    # and the checkpoint is not trivially the starting one
    c = torch.load(os.path.join(out, "model_0000003.pth"), map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(c[k], a["model"][k]) for k in c)

    # --eval-only on the trained weights reproduces the end-of-training evaluation
    ev = str(tmp_path / "eval")
    run_train_net(shapes_root, "--config-file", BUILTIN, "--eval-only", *opts, f"train.output_dir={ev}",
                  f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}")
    with open(os.path.join(out, "eval_results.json")) as f, open(os.path.join(ev, "eval_results.json")) as g:
        assert json.load(f)["bbox"]["AP"] == pytest.approx(json.load(g)["bbox"]["AP"], abs=1e-6)


def test_bad_value_in_lazy_config_gets_the_yacs_message(shapes_root, tmp_path):
    # the yacs side in-process (its command-line form: test_end_to_end's bad-value test)
    from detectron2.modeling import build_model

    from libra_d2.config import LibraConfigError, get_libra_cfg

    cfg = get_libra_cfg(os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    cfg.MODEL.LIBRA.NEG_SAMPLER = "uniform"
    with pytest.raises(LibraConfigError) as yacs:
        build_model(cfg)  # the box head checks sampler names against the registry
    lazy = run_train_net(shapes_root, "--config-file", BUILTIN, "model.roi_heads.neg_sampler=uniform",
                         f"train.output_dir={tmp_path / 'l'}", check=False)
    allowed = "'uniform' is invalid: allowed one of 'iou_balanced', 'ohem', 'random'"
    assert "MODEL.LIBRA.NEG_SAMPLER" in str(yacs.value) and allowed in str(yacs.value)
    for proc in (lazy,):
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("train_net.py: config error:") and "MODEL.LIBRA.NEG_SAMPLER" in last and allowed in last
    assert "LibraROIHeads(neg_sampler=...)" in lazy.stderr.strip().splitlines()[-1]
    # a bad BFP level, the other kind of check
    lazy = run_train_net(shapes_root, "--config-file", BUILTIN, "model.backbone.refine_level=7",
                         f"train.output_dir={tmp_path / 'l2'}", check=False)
    assert lazy.returncode == 2 and "MODEL.BFP.REFINE_LEVEL" in lazy.stderr.strip().splitlines()[-1]


def test_lazy_amp_on_cpu_uses_the_cpu_autocast_trainer(shapes_root, tmp_path):
    """train.amp.enabled on a CPU model: detectron2's AMPTrainer (CUDA only) becomes the CPU
    autocast trainer; without native bfloat16 (forced here) it trains in float32 and says so."""
    opts = ["train.max_iter=2", "train.amp.enabled=True", "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0", "dataloader.test.dataset.names=libra_shapes_val_mini", "train.eval_period=0",
            "model.roi_heads.batch_size_per_image=64", f"train.output_dir={tmp_path}"]
    import subprocess
    import sys

    env = dict(os.environ, DETECTRON2_DATASETS=shapes_root, PYTHONWARNINGS="ignore", LIBRA_CPU_BF16="0")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", BUILTIN, *opts],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "no native bfloat16" in log and "CUDA is required" not in log
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))


def _has_vitdet():
    try:
        from detectron2.modeling import SimpleFeaturePyramid, ViT  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", ["libra_regnet_fpn_builtin.py", "libra_vitdet_builtin.py"])
def test_libra_and_plain_twins_on_other_backbones_build_and_take_a_training_step(name):
    """make test: the small RegNet-FPN / ViTDet configs (Libra and plain) build, the Libra one's
    parameters are the plain one's plus bfp.*, and a training step runs."""
    if "vitdet" in name and not _has_vitdet():
        with pytest.raises(ImportError, match="detectron2 main"):
            LazyConfig.load(os.path.join(ROOT, "configs/lazy", name))
        return
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    libra = instantiate(LazyConfig.load(os.path.join(ROOT, "configs/lazy", name)).model).train()
    plain = instantiate(LazyConfig.load(os.path.join(ROOT, "configs/lazy", name.replace("libra_", ""))).model)
    extra = set(libra.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("backbone.bfp.") for k in extra) and set(plain.state_dict()) <= set(libra.state_dict())
    inst = Instances((192, 256), gt_boxes=Boxes(torch.tensor([[20.0, 30, 120, 140]])), gt_classes=torch.tensor([2]))
    with EventStorage():
        losses = libra([{"image": torch.rand(3, 192, 256) * 255, "instances": inst}])
    sum(losses.values()).backward()
    assert libra.backbone.bfp.refine.conv_out.weight.grad is not None


@pytest.mark.opt_in
@pytest.mark.parametrize("name", ["libra_regnet_fpn_builtin.py", "libra_vitdet_builtin.py"])
def test_bfp_on_other_backbones_trains_evaluates_resumes_and_exports(shapes_root, tmp_path, name):
    """The BFP wrapper on a second backbone family (RegNet-FPN, both detectron2 versions) and
    on ViTDet's simple feature pyramid (detectron2 main): a few iterations through train_net.py,
    the end-of-training evaluation, an exact resume, and torch.export of the trained model."""
    if "vitdet" in name and not _has_vitdet():
        with pytest.raises(ImportError, match="detectron2 main"):
            LazyConfig.load(os.path.join(ROOT, "configs/lazy", name))
        return
    from libra_d2.export import compare_detections, export_program
    from libra_d2.export.exporters import example_image
    from libra_d2.modeling.backbone import BFPBackbone

    config = os.path.join(ROOT, "configs/lazy", name)
    opts = ["train.max_iter=4", "train.checkpointer.period=2", "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            "dataloader.test.dataset.names=libra_shapes_val_mini", "model.roi_heads.batch_size_per_image=64",
            "train.seed=5"]
    out = str(tmp_path / "straight")
    run_train_net(shapes_root, "--config-file", config, *opts, f"train.output_dir={out}")
    with open(os.path.join(out, "eval_results.json")) as f:
        assert "AP" in json.load(f)["bbox"]
    resumed = _folder_resuming_from(out, "model_0000001.pth", tmp_path / "resumed")
    run_train_net(shapes_root, "--config-file", config, "--resume", *opts, f"train.output_dir={resumed}")
    a = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    b = torch.load(os.path.join(resumed, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("backbone.bfp.") for k in a)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k

    cfg = LazyConfig.load(config)
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone, BFPBackbone)
    model.load_state_dict(a)
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # detections to compare even after 4 iterations
    image = example_image(type("C", (), {"MODEL": type("M", (), {"DEVICE": "cpu"})})(), (192, 256))
    if "vitdet" in name:
        # torch.export cannot give ViTDet's ViT dynamic sizes (with or without the wrapper):
        # refused, naming the backbone as the cause
        from libra_d2.export import BackboneExportError

        with pytest.raises(BackboneExportError, match="backbone SimpleFeaturePyramid fails without the BFP wrapper"):
            export_program(model, image)
        return
    program = export_program(model, image)
    with torch.no_grad():
        from libra_d2.export import ExportableDetector

        ref = ExportableDetector(model)(image)
    res = compare_detections(ref, program.module()(image), require_detections=True)
    assert res["all_matched"], res
