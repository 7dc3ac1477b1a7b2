"""Faults: kill-and-resume exactness, kill during a checkpoint write, non-finite loss, bad data."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from libra_d2.data.build import checked_dataset_dicts
from tests.conftest import ROOT, TINY, run_train_net

CFG = os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml")
SHORT = [*TINY, "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "10", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


# (the plain pipeline, one aspect and no workers, is a subset of both: grouping and workers in
# the first, the single-process loader in the second)
PIPELINES = {
    # mixed landscape/portrait images, detectron2's aspect-ratio grouping (on by default), 2 workers
    "grouped-2-workers": ["DATASETS.TRAIN", "('libra_shapes_mixed_train',)", "DATALOADER.NUM_WORKERS", "2"],
    # LVIS-style repeat factors (threshold above the classes' image frequencies: factors > 1)
    "repeat-factors": ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.9"],
}


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", [p if p == "grouped-2-workers" else pytest.param(p, marks=pytest.mark.opt_in)
                                      for p in PIPELINES])
def test_sigkill_then_resume_equals_straight_run(shapes_root, tmp_path, pipeline):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    short = [*SHORT, *PIPELINES[pipeline], "SOLVER.CHECKPOINT_PERIOD", "6", "SOLVER.MAX_ITER", "12"]
    run_train_net(shapes_root, "--config-file", CFG, *short, "OUTPUT_DIR", straight)

    env = dict(os.environ, DETECTRON2_DATASETS=shapes_root, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", CFG, *short, "OUTPUT_DIR", killed]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = os.path.join(killed, "last_checkpoint")
    deadline = time.time() + 300
    while time.time() < deadline:
        if os.path.exists(tag) and open(tag).read().strip() == "model_0000005.pth":
            break
        if proc.poll() is not None:
            pytest.fail("training ended before the iteration-6 checkpoint was seen")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "model_final.pth")), "process was not killed mid-run"

    run_train_net(shapes_root, "--config-file", CFG, "--resume", *short, "OUTPUT_DIR", killed)
    a, b = weights(os.path.join(straight, "model_final.pth")), weights(os.path.join(killed, "model_final.pth"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(torch.as_tensor(a[k]).float(), torch.as_tensor(b[k]).float(), atol=1e-5, rtol=1e-4), k
    ckpt = torch.load(os.path.join(killed, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 11


CHILD = r"""
import os, sys, torch
sys.path.insert(0, {root!r})
from libra_d2.engine import AtomicDetectionCheckpointer
model = torch.nn.Linear(8192, 8192 * 2)
ck = AtomicDetectionCheckpointer(model, {out!r})
ck.save("model_a")
print("second", flush=True)
for _ in range(20):
    ck.save("model_b")
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    out = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=ROOT, out=out)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.stdout.readline().strip() == "second"
    deadline = time.time() + 60
    while time.time() < deadline and not any(".pth.tmp." in f for f in os.listdir(out)):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = os.listdir(out)
    assert any(".pth.tmp." in f for f in names), "the kill did not land during a write"
    assert open(os.path.join(out, "last_checkpoint")).read() in ("model_a.pth", "model_b.pth")
    last = open(os.path.join(out, "last_checkpoint")).read()
    data = torch.load(os.path.join(out, last), map_location="cpu", weights_only=False)
    assert data["model"]["weight"].shape == (16384, 8192)
    for f in names:  # every complete-looking file loads
        if f.endswith(".pth"):
            torch.load(os.path.join(out, f), map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shapes_root, tmp_path):
    out = str(tmp_path / "nan")
    short = [*SHORT, "SOLVER.CHECKPOINT_PERIOD", "4"]
    run_train_net(shapes_root, "--config-file", CFG, *short, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", out)
    before = open(os.path.join(out, "last_checkpoint")).read()
    proc = run_train_net(shapes_root, "--config-file", CFG, "--resume", *short, "SOLVER.MAX_ITER", "8",
                         "MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]", "OUTPUT_DIR", out, check=False)
    assert proc.returncode != 0
    assert "infinite or NaN" in proc.stderr or "Inf/NaN" in proc.stderr
    assert open(os.path.join(out, "last_checkpoint")).read() == before
    w = weights(os.path.join(out, before))
    assert all(torch.isfinite(torch.as_tensor(v).float()).all() for v in w.values())


# ---------------------------------------------------------------- data faults


def small_coco(shapes_root, tmp_path, mutate):
    """A 4-image COCO file (copied from libra_shapes) with a fault applied by ``mutate``."""
    from libra_d2.data import dataset_dir

    src = dataset_dir(shapes_root)
    with open(os.path.join(src, "annotations", "instances_train.json")) as f:
        d = json.load(f)
    ids = [im["id"] for im in d["images"] if any(a["image_id"] == im["id"] for a in d["annotations"])][:4]
    d["images"] = [im for im in d["images"] if im["id"] in ids]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in ids]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for im in d["images"]:
        shutil.copy(os.path.join(src, "train", im["file_name"]), img_dir / im["file_name"])
    text = mutate(d, img_dir)
    path = tmp_path / "ann.json"
    path.write_text(text if isinstance(text, str) else json.dumps(d))
    return str(path), str(img_dir), d


def register(name, json_file, img_dir):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, img_dir)


def trainer_for(libra_cfg, name, tmp_path):
    from libra_d2.engine import LibraTrainer

    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
                    "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 1,
                    "INPUT.MIN_SIZE_TRAIN", "(128,)", "OUTPUT_DIR", str(tmp_path / "out"))
    return cfg, LibraTrainer


def test_truncated_json_names_the_file(shapes_root, tmp_path, libra_cfg):
    from libra_d2.data.checks import DatasetError

    json_file, img_dir, _ = small_coco(shapes_root, tmp_path, lambda d, _: json.dumps(d)[:-40])
    register("fault_truncated", json_file, img_dir)
    cfg, T = trainer_for(libra_cfg, "fault_truncated", tmp_path)
    with pytest.raises(DatasetError, match=r"ann\.json is not valid JSON \(truncated or malformed\)"):
        T(cfg)


def test_missing_image_names_file_and_id(shapes_root, tmp_path, libra_cfg):
    from libra_d2.data.checks import DatasetError

    def drop_file(d, img_dir):
        os.remove(img_dir / d["images"][0]["file_name"])
        for im in d["images"][1:]:
            os.remove(img_dir / im["file_name"])
        return json.dumps(d)

    json_file, img_dir, d = small_coco(shapes_root, tmp_path, drop_file)
    register("fault_missing", json_file, img_dir)
    cfg, T = trainer_for(libra_cfg, "fault_missing", tmp_path)
    trainer = T(cfg)
    with pytest.raises(DatasetError, match=r"image id \d+ \(.*\.jpg\): cannot be loaded"):
        trainer.train()


def test_degenerate_and_outside_boxes_are_counted(shapes_root, tmp_path, libra_cfg, caplog):
    def corrupt(d, _):
        d["annotations"][0]["bbox"][2] = 0  # zero width
        d["annotations"][1]["bbox"][3] = -5  # negative height
        d["annotations"][2]["bbox"] = [300.0, 10.0, 50.0, 20.0]  # reaches past x = 320
        d["annotations"][3]["bbox"] = [400.0, 10.0, 20.0, 20.0]  # entirely outside
        return json.dumps(d)

    json_file, img_dir, d = small_coco(shapes_root, tmp_path, corrupt)
    register("fault_boxes", json_file, img_dir)
    cfg, T = trainer_for(libra_cfg, "fault_boxes", tmp_path)
    with caplog.at_level(logging.WARNING):
        dicts = checked_dataset_dicts(cfg, ["fault_boxes"])
    text = caplog.text
    assert "dropped 2 boxes with zero or negative width/height" in text
    assert "dropped 1 boxes lying entirely outside their image" in text
    assert "clipped 1 boxes reaching outside their image" in text
    n = sum(len(x["annotations"]) for x in dicts)
    assert n == len(d["annotations"]) - 3
    trainer = T(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()  # trains on what is left
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no optimizer step was taken"


def test_noncontiguous_ids_empty_and_crowd_only_images(shapes_root, tmp_path, libra_cfg):
    def remap(d, _):
        for c in d["categories"]:
            c["id"] = c["id"] * 10
        for a in d["annotations"]:
            a["category_id"] *= 10
        first, second = d["images"][0]["id"], d["images"][1]["id"]
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != first]  # image without annotations
        for a in d["annotations"]:
            if a["image_id"] == second:
                a["iscrowd"] = 1  # crowd-only image
        return json.dumps(d)

    json_file, img_dir, d = small_coco(shapes_root, tmp_path, remap)
    register("fault_ids", json_file, img_dir)
    from libra_d2.engine import build_loader, stream_from_yacs

    cfg, _ = trainer_for(libra_cfg, "fault_ids", tmp_path)
    stream = stream_from_yacs(cfg, seed=5)  # libra-d2's training stream: data checks, then detectron2's loading
    assert len(stream.dicts) == 2  # the empty and the crowd-only image are filtered for training
    first, second = d["images"][0]["id"], d["images"][1]["id"]
    assert {x["image_id"] for x in stream.dicts}.isdisjoint({first, second})
    batches = build_loader(stream, seed=5)
    seen = set()
    for _, batch in zip(range(4), batches):  # what the model receives: contiguous classes 0..3
        for sample in batch:
            assert sample["image_id"] not in (first, second)
            seen |= set(sample["instances"].gt_classes.tolist())
    assert seen and seen <= {0, 1, 2, 3}


class MemoryHandler:
    """An in-memory ``memory://`` path handler for fvcore/detectron2's ``PathManager``: a file
    written there exists nowhere on disk, so a plain ``open`` of such a path cannot be it."""

    def __new__(cls):
        import io

        from iopath.common.file_io import PathHandler

        files = {}

        class _Writer:
            """A remote-style file: write/flush/close, no file descriptor."""

            def __init__(self, path, text, initial=b""):
                self._buf, self._path, self._text, self.closed = bytearray(initial), path, text, False

            def write(self, data):
                self._buf += data.encode() if self._text else bytes(data)
                return len(data)

            def flush(self):
                files[self._path] = bytes(self._buf)

            def writable(self):
                return True

            def close(self):
                if not self.closed:
                    self.flush()
                    self.closed = True

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

        class Handler(PathHandler):
            def _get_supported_prefixes(self):
                return ["memory://"]

            def _open(self, path, mode="r", buffering=-1, **kwargs):
                text = "b" not in mode
                if "w" in mode or "a" in mode:
                    return _Writer(path, text, files.get(path, b"") if "a" in mode else b"")
                if path not in files:
                    raise FileNotFoundError(path)
                return io.StringIO(files[path].decode()) if text else io.BytesIO(files[path])

            def _exists(self, path, **kwargs):
                return path in files or any(k.startswith(path.rstrip("/") + "/") for k in files)

            def _isfile(self, path, **kwargs):
                return path in files

            def _isdir(self, path, **kwargs):
                return not self._isfile(path) and self._exists(path)

            def _ls(self, path, **kwargs):
                prefix = path.rstrip("/") + "/"
                return sorted({k[len(prefix):].split("/")[0] for k in files if k.startswith(prefix)})

            def _mkdirs(self, path, **kwargs):
                pass

            def _rm(self, path, **kwargs):
                files.pop(path, None)

            def _get_local_path(self, path, **kwargs):  # a local copy for readers that need a file
                import tempfile

                fd, local = tempfile.mkstemp(suffix=os.path.basename(path))
                with os.fdopen(fd, "wb") as f:
                    f.write(files[path])
                return local

        h = Handler()
        h.files = files
        return h


def test_training_and_resume_write_only_through_path_manager(shapes_root, tmp_path, libra_cfg, monkeypatch):
    """OUTPUT_DIR on a registered in-memory handler: checkpoints, last_checkpoint, metrics and
    eval_results.json land there, a resume reads them back, and nothing but TensorBoard's
    events (local in detectron2 too) is written to the local disk."""
    from detectron2.utils.file_io import PathManager

    from libra_d2.engine import LibraTrainer, write_results

    handler = MemoryHandler()
    PathManager.register_handler(handler)
    monkeypatch.chdir(tmp_path)  # a relative local write would land here
    out = "memory://run"
    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", *TINY, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", 4,
                    "SOLVER.CHECKPOINT_PERIOD", 2, "SEED", 3, "OUTPUT_DIR", out)
    trainer = LibraTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    write_results(out, {"bbox": {"AP": 1.0}})
    names = set(handler.files)
    for f in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint", "metrics.json",
              "eval_results.json"):
        assert f"{out}/{f}" in names, (f, sorted(names))
    assert handler.files[f"{out}/last_checkpoint"] == b"model_final.pth"

    # resume from the handler: continues after the last checkpoint's iteration
    handler.files[f"{out}/last_checkpoint"] = b"model_0000001.pth"
    cfg2 = cfg.clone()
    cfg2.defrost()
    cfg2.SOLVER.MAX_ITER = 4
    resumed = LibraTrainer(cfg2)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    with PathManager.open(f"{out}/model_final.pth", "rb") as f:
        final = torch.load(f, map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    straight = trainer.model.state_dict()
    for k, v in resumed.model.state_dict().items():  # exact resume: the same weights as the straight run
        assert torch.equal(v, straight[k]), k

    local = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert all("events.out.tfevents" in f for f in local), local
