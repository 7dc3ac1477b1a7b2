"""The README's own-code snippet, extracted verbatim and run as a user would, with
LibraTrainer and with detectron2's DefaultTrainer."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "128", "TEST.DETECTIONS_PER_IMAGE", "20"]


def readme_snippet():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Use it from your own detectron2 code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one python block"
    return blocks[0]


def run_snippet(tmp_path, source, *args):
    """Run ``source`` as a script from a folder where ``configs/`` and ``datasets/`` are the
    project's (the README runs from the repository root)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    for name, target in (("configs", os.path.join(ROOT, "configs")),):
        if not (work / name).exists():
            os.symlink(target, work / name)
    script = work / "my_train.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, str(script), *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture
def linked_data(shapes_root, tmp_path):
    (tmp_path / "work").mkdir()
    os.symlink(shapes_root, tmp_path / "work" / "datasets")  # ensure_generated("datasets") finds it


def test_readme_snippet_trains_and_evaluates_with_libra_trainer(linked_data, tmp_path):
    src = readme_snippet()
    assert "Base = LibraTrainer" in src
    out = tmp_path / "out_libra"
    proc = run_snippet(tmp_path, src, *QUICK, "OUTPUT_DIR", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "Evaluation results for bbox" in log
    assert (out / "model_final.pth").is_file() and (out / "coco_instances_results.json").is_file()


def test_readme_snippet_with_default_trainer_stops_at_merge_or_trains(linked_data, tmp_path):
    src = readme_snippet()
    line = "add_libra_trainer_config(cfg)  #"
    assert line in src
    src = src.replace("Base = LibraTrainer", "Base = DefaultTrainer").replace(line, "#")
    # the built-in recipe asks for AdamW, which DefaultTrainer cannot build: a clear stop at merge
    out = tmp_path / "out_stop"
    proc = run_snippet(tmp_path, src, *QUICK, "OUTPUT_DIR", str(out))
    assert proc.returncode != 0
    assert "SOLVER.OPTIMIZER" in proc.stderr and "LibraTrainer" in proc.stderr, proc.stderr[-2000:]
    assert not (out / "model_final.pth").exists()
    # an SGD variant of the recipe (no LibraTrainer keys): detectron2's own trainer trains the
    # Libra model and its default COCOEvaluator evaluates on the default install
    from libra_d2.config import TRAINER_KEYS, get_libra_cfg

    cfg = get_libra_cfg(os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    for key in TRAINER_KEYS:
        section, name = key.split(".")
        cfg[section].pop(name)
    cfg.SOLVER.BASE_LR = 0.002
    sgd_yaml = tmp_path / "work" / "libra_rcnn_sgd.yaml"
    sgd_yaml.write_text(cfg.dump())
    src = src.replace("configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml", str(sgd_yaml))
    out = tmp_path / "out_sgd"
    proc = run_snippet(tmp_path, src, *QUICK, "OUTPUT_DIR", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Evaluation results for bbox" in proc.stdout + proc.stderr
    assert (out / "model_final.pth").is_file()
