"""dev/ablate.py and dev.records.ablation: statistics on synthetic results, and real resumable runs."""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from dev.records.ablation import build_report, paired_difference, report_markdown, summarize_metric, t_quantile, verdict
from tests.conftest import ROOT, TINY


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_matches_tables(df, expected):
    # two-sided 95% critical values of Student's t, from printed tables
    assert abs(t_quantile(0.975, df) - expected) < 1e-4
    assert abs(t_quantile(0.025, df) + expected) < 1e-4


INTEL = {"model": "Intel Xeon", "cpu_capability": "AVX512", "flags": ["avx2", "avx512f", "amx_bf16"]}
AMD = {"model": "AMD EPYC", "cpu_capability": "AVX2", "flags": ["avx2"]}
VERSIONS = {"torch": "2.14.1", "torchvision": "0.29.1", "detectron2": "0.6"}
PROV = {"commit": "a" * 40, "clean": True, "processor": INTEL, "threads": 1, "versions": VERSIONS}


def _runs(name, aps, commit="a" * 40, processor=INTEL, config="c.yaml"):
    prov = dict(PROV, commit=commit, processor=processor)
    return [{"name": name, "seed": s, "metrics": {"AP": ap, "AP50": ap + 20}, "config_file": config, "opts": [],
             "provenance": prov} for s, ap in enumerate(aps, 1)]


def test_pairs_form_only_within_one_processor_class_and_one_or_an_equivalent_commit():
    from dev.records.ablation import identity_equivalence

    base = _runs("baseline", [30.0, 31.0, 32.0], config="base.yaml")
    libra = _runs("libra", [33.0, 34.0, 36.0], config="libra.yaml")
    assert build_report(base + libra, "baseline")["differences"]["libra"]["AP"]["n"] == 3
    # seed 3 of libra on another processor class (same model name, other instruction set)
    libra[2]["provenance"] = dict(libra[2]["provenance"], processor=dict(INTEL, flags=["avx2"]))
    rep = build_report(base + libra, "baseline")
    assert rep["differences"]["libra"]["AP"]["n"] == 2 and "different processors" in rep["differences"]["libra"]["unpaired"][3]
    # seed 2 at another commit: unpaired unless seeded-identity hashes prove the commits equivalent
    libra[1]["provenance"] = dict(libra[1]["provenance"], commit="b" * 40)
    rep = build_report(base + libra, "baseline")
    assert rep["differences"]["libra"]["AP"]["seeds"] == [1] and "not proven equivalent" in rep["differences"]["libra"]["unpaired"][2]
    assert "seed 2: not paired" in report_markdown(rep)

    from dev.records.ablation import FULL_STRUCTURE

    def record(commit, h_base, h_libra, processor=INTEL):
        return {"provenance": dict(PROV, commit=commit, processor=processor), "structure": list(FULL_STRUCTURE),
                "hashes": {"b": h_base, "l": h_libra},
                "runs": {"b": {"covers": [["base.yaml", []]]}, "l": {"covers": [["libra.yaml", []]]}}}

    same = identity_equivalence([record("a" * 40, "h1", "h2"), record("b" * 40, "h1", "h2")])
    assert build_report(base + libra, "baseline", equivalent=same)["differences"]["libra"]["AP"]["seeds"] == [1, 2]
    moved = identity_equivalence([record("a" * 40, "h1", "h2"), record("b" * 40, "h1", "h3")])  # libra's hash moved
    assert build_report(base + libra, "baseline", equivalent=moved)["differences"]["libra"]["AP"]["seeds"] == [1]
    elsewhere = identity_equivalence([record("a" * 40, "h1", "h2", AMD), record("b" * 40, "h1", "h2", AMD)])
    assert build_report(base + libra, "baseline", equivalent=elsewhere)["differences"]["libra"]["AP"]["seeds"] == [1]
    # a run without provenance pairs with nothing
    legacy = [dict(r, provenance=None, commit="a" * 40) for r in _runs("libra", [33.0, 34.0, 36.0])]
    assert build_report(base + legacy, "baseline")["differences"]["libra"]["AP"]["n"] == 0


def test_paired_ci_and_verdicts_on_known_numbers():
    base = [30.0, 31.0, 32.0]
    better = [32.0, 33.5, 34.0]  # differences 2, 2.5, 2
    diffs = [b - a for a, b in zip(base, better)]
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 4.302653 * sd / math.sqrt(3)
    d = paired_difference(dict(enumerate(better)), dict(enumerate(base)))
    assert d["n"] == 3 and abs(d["mean"] - m) < 1e-12 and abs(d["std"] - sd) < 1e-12
    assert abs(d["ci"][0] - (m - half)) < 1e-5 and abs(d["ci"][1] - (m + half)) < 1e-5
    assert verdict(d) == "helps"
    worse = paired_difference({0: 28.0, 1: 29.1, 2: 29.9}, dict(enumerate(base)))
    assert verdict(worse) == "hurts"
    noisy = paired_difference({0: 35.0, 1: 27.0, 2: 33.0}, dict(enumerate(base)))
    assert verdict(noisy) == "no detectable difference at 3 seeds"
    # pairing: only seeds both variants have count
    partial = paired_difference({0: 31.0, 5: 40.0}, dict(enumerate(base)))
    assert partial["n"] == 1 and partial["ci"] is None
    assert verdict(partial).startswith("not enough runs (1 paired seed;")


def test_report_means_stds_and_single_seed():
    runs = _runs("baseline", [30.0, 31.0, 35.0]) + _runs("libra", [33.0, 34.0, 37.0]) + _runs("one", [40.0])
    rep = build_report(runs, "baseline")
    s = rep["configs"]["baseline"]["AP"]
    assert s["n"] == 3 and abs(s["mean"] - 32.0) < 1e-12 and abs(s["std"] - statistics.stdev([30, 31, 35])) < 1e-12
    assert rep["configs"]["one"]["AP"]["std"] is None
    assert rep["differences"]["one"]["AP"]["verdict"].startswith("not enough runs")
    assert rep["differences"]["libra"]["AP"]["verdict"] == "helps"  # +3, +3, +2
    md = report_markdown(rep)
    assert "| libra | 3 | 34.67 ± 2.08" in md and "not enough runs" in md
    assert summarize_metric([float("nan"), 1.0, 3.0]) == {"n": 2, "mean": 2.0, "std": statistics.stdev([1.0, 3.0])}


def _ablate(shapes_root, out, *extra):
    env = dict(os.environ, DETECTRON2_DATASETS=shapes_root, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.join(ROOT, "dev/ablate.py"), "-o", out, "--seeds", "7",
           "--base", "configs/builtin/faster_rcnn_R_18_FPN_cpu.yaml",
           "--switch", "bl1=MODEL.ROI_HEADS.NAME LibraROIHeads MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE balanced_l1", *extra,
           "--", *TINY, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.DETECTIONS_PER_IMAGE", "20"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.opt_in  # three ablate.py runs with trainings (~110 s of a core): make test-long
def test_ablation_skips_finished_and_resumes_interrupted_runs(shapes_root, tmp_path):
    out = str(tmp_path / "abl")
    first = _ablate(shapes_root, out, "--only", "baseline")
    assert "1/2 baseline seed=7: training" in first and "2/2 bl1 seed=7: new, not run" in first
    base_results = os.path.join(out, "baseline", "seed7", "eval_results.json")
    stamp = os.path.getmtime(base_results)
    # make bl1 an interrupted run: a finished 4-iteration run cut back to its iteration-2 checkpoint
    bl1 = os.path.join(out, "bl1", "seed7")
    _ablate(shapes_root, out, "--only", "bl1")
    for f in ("eval_results.json", "model_final.pth"):
        os.remove(os.path.join(bl1, f))
    with open(os.path.join(bl1, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    second = _ablate(shapes_root, out)
    assert "baseline seed=7: AP" in second and "(finished earlier)" in second
    assert "bl1 seed=7: resuming" in second
    assert os.path.getmtime(base_results) == stamp  # not re-run
    with open(os.path.join(bl1, "log.txt")) as f:
        assert "Starting training from iteration 2" in f.read()
    with open(os.path.join(out, "ablation.json")) as f:
        data = json.load(f)
    assert {r["name"] for r in data["runs"] if r["metrics"]} == {"baseline", "bl1"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert {r["commit"] for r in data["runs"]} == {head}  # the checkout that trained each run
    for r in data["runs"]:  # each record: processor, threads, versions, seconds
        p = r["provenance"]
        assert p["processor"]["model"] and p["threads"] >= 1 and p["versions"]["detectron2"] and p["seconds"] > 0
    assert data["report"]["differences"]["bl1"]["AP"]["verdict"].startswith("not enough runs")
    assert os.path.isfile(os.path.join(out, "ablation.md"))


def test_provenance_names_this_checkout_or_the_given_commit(monkeypatch, tmp_path):
    from dev.records.provenance import git_commit, processor_class, provenance

    monkeypatch.delenv("LIBRA_D2_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit, clean = git_commit(ROOT)
    assert commit == head and clean in (True, False)
    assert git_commit(str(tmp_path)) == ("unknown", None)  # not a git checkout, no commit given: said so
    monkeypatch.setenv("LIBRA_D2_COMMIT", head + "+dirty")  # a copy of the tree without .git
    assert git_commit(str(tmp_path)) == (head, False)
    rec = provenance(threads=1, root=str(tmp_path), seconds=2.0)
    assert rec["commit"] == head and rec["threads"] == 1 and rec["seconds"] == 2.0
    assert processor_class(rec["processor"]) == processor_class(provenance()["processor"])
    other = dict(rec["processor"], flags=["avx2"] if "avx512f" in rec["processor"]["flags"] else ["avx512f"])
    assert processor_class(other) != processor_class(rec["processor"])  # same name, other instruction set


def test_builtin_preset_plan_and_per_group_baselines():
    from dev.records.ablation import preset_plan

    plan = {v.name: v for v in preset_plan("builtin")}
    assert set(plan) == {"baseline", "libra", "sampling", "bfp", "balanced_l1", "rpn_cap",
                         "retinanet_baseline", "retinanet_libra"}
    assert plan["baseline"].baseline is None and plan["retinanet_baseline"].baseline is None
    assert plan["retinanet_libra"].baseline == "retinanet_baseline" and plan["bfp"].baseline == "baseline"
    # each component switch builds a valid config (balanced_l1 needs LibraROIHeads: checked by validation)
    import libra_d2
    from libra_d2.config import get_libra_cfg

    for v in plan.values():
        libra_d2.validate_libra_config(get_libra_cfg(os.path.join(ROOT, v.config_file), v.opts))
    runs = _runs("baseline", [30.0, 31.0]) + _runs("retinanet_baseline", [10.0, 12.0]) + _runs("retinanet_libra", [13.0, 14.0])
    rep = build_report(runs, {v.name: v.baseline for v in plan.values()})
    assert rep["differences"]["retinanet_libra"]["baseline"] == "retinanet_baseline"
    assert abs(rep["differences"]["retinanet_libra"]["AP"]["mean"] - 2.5) < 1e-12
    assert "baseline" not in rep["differences"]


def test_heads_presets_and_segm_report_from_finished_runs(tmp_path):
    """builtin-heads pairs each Libra head with its twin; Mask R-CNN runs, which evaluate
    bbox and segm, get a second (segm) report next to the box-AP one."""
    from dev.records.ablation import preset_plan

    plan = {v.name: v for v in preset_plan("builtin-heads")}
    assert set(plan) == {"cascade_baseline", "cascade_libra", "mask_baseline", "mask_libra", "fast_baseline", "fast_libra"}
    for name, v in plan.items():
        assert os.path.isfile(os.path.join(ROOT, v.config_file)), v.config_file
        if name.endswith("_libra"):
            assert v.baseline == name.replace("_libra", "_baseline")
    out = tmp_path / "abl"
    segm = {("mask_baseline", 1): 20.0, ("mask_baseline", 2): 22.0, ("mask_libra", 1): 23.0, ("mask_libra", 2): 26.0}
    for (name, seed), ap in segm.items():
        d = out / name / f"seed{seed}"
        d.mkdir(parents=True)
        res = {t: {m: ap + off for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")} for t, off in (("bbox", 10.0), ("segm", 0.0))}
        (d / "eval_results.json").write_text(json.dumps(res))
        (d / "ablate_run.json").write_text(json.dumps(PROV))
    cmd = [sys.executable, os.path.join(ROOT, "dev/ablate.py"), "--preset", "builtin-mask", "--seeds", "1", "2",
           "-o", str(out), "--report-only"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "ablation.json").read_text())
    assert abs(data["report"]["configs"]["mask_libra"]["AP"]["mean"] - 34.5) < 1e-9  # bbox = segm + 10
    seg = data["reports_by_task"]["segm"]
    assert abs(seg["configs"]["mask_baseline"]["AP"]["mean"] - 21.0) < 1e-9
    assert abs(seg["differences"]["mask_libra"]["AP"]["mean"] - 3.5) < 1e-9  # pairs: +3, +4
    md = (out / "ablation.md").read_text()
    assert "COCO mask AP" in md and "COCO box AP" in md
    # --report-only with nothing but the folder rebuilds the same report from the earlier plan
    (out / "ablation.md").unlink()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dev/ablate.py"), "-o", str(out), "--report-only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((out / "ablation.json").read_text())["report"] == data["report"]
    assert (out / "ablation.md").read_text() == md
    # and --help names every preset
    helptext = subprocess.run([sys.executable, os.path.join(ROOT, "dev/ablate.py"), "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120).stdout
    from dev.records.ablation import PRESET_NAMES

    assert all(name in helptext for name in PRESET_NAMES)


def test_sampling_and_rpn_presets_report_proposal_recall_from_finished_runs(tmp_path):
    """builtin-sampling compares OHEM and the Libra sampling pair with Faster R-CNN;
    builtin-rpn's proposal-only runs are reported by AR (COCOEvaluator's box_proposals)."""
    from dev.records.ablation import preset_plan

    sampling = {v.name: v for v in preset_plan("builtin-sampling")}
    assert set(sampling) == {"baseline", "sampling", "ohem"}
    assert sampling["ohem"].baseline == sampling["sampling"].baseline == "baseline"
    assert sampling["sampling"].opts == ["MODEL.ROI_HEADS.NAME", "LibraROIHeads"]
    rpn = {v.name: v for v in preset_plan("builtin-rpn")}
    assert set(rpn) == {"rpn_baseline", "libra_rpn"} and rpn["libra_rpn"].baseline == "rpn_baseline"
    out = tmp_path / "abl"
    recall = {("rpn_baseline", 1): 40.0, ("rpn_baseline", 2): 42.0, ("libra_rpn", 1): 45.0, ("libra_rpn", 2): 48.0}
    for (name, seed), ar in recall.items():
        d = out / name / f"seed{seed}"
        d.mkdir(parents=True)
        res = {"box_proposals": {"AR@100": ar, "AR@1000": ar + 10, "ARs@100": ar - 5, "ARm@100": ar, "ARl@100": ar + 5}}
        (d / "eval_results.json").write_text(json.dumps(res))
        (d / "ablate_run.json").write_text(json.dumps(PROV))
    # seed 2 of libra_rpn from another commit: its record says so, and it is not paired
    (out / "libra_rpn" / "seed2" / "ablate_run.json").write_text(json.dumps(dict(PROV, commit="abc1234", seconds=1.0)))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dev/ablate.py"), "--preset", "builtin-rpn", "--seeds",
                           "1", "2", "-o", str(out), "--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = {(r["name"], r["seed"]): r for r in json.loads((out / "ablation.json").read_text())["runs"]}
    assert runs[("libra_rpn", 2)]["commit"] == "abc1234" and runs[("libra_rpn", 1)]["commit"] == PROV["commit"]
    report = json.loads((out / "ablation.json").read_text())["report"]
    assert report["task"] == "box_proposals" and report["metrics"][:2] == ["AR@100", "AR@1000"]
    assert abs(report["configs"]["libra_rpn"]["AR@1000"]["mean"] - 56.5) < 1e-9
    assert abs(report["differences"]["libra_rpn"]["AR@100"]["mean"] - 5.0) < 1e-9  # one pair: +5
    assert "not proven equivalent" in report["differences"]["libra_rpn"]["unpaired"]["2"]
    md = (out / "ablation.md").read_text()
    assert "COCO proposal recall" in md and "ΔAR@100" in md


def test_each_run_keeps_its_raw_outputs_and_its_ap_recomputes_from_them(shapes_root, tmp_path):
    """One real 4-iteration run through dev/ablate.py: the record points at the run's own
    eval_results.json, last metrics line and gzipped detections, and pycocotools on those
    detections against the generated val annotations gives the record's AP."""
    from dev.records.run_record import OUTPUT_FILES, recompute_box_ap

    out = str(tmp_path / "abl")
    _ablate(shapes_root, out, "--only", "baseline")
    with open(os.path.join(out, "ablation.json")) as f:
        run = next(r for r in json.load(f)["runs"] if r["name"] == "baseline")
    outputs = os.path.join(out, run["outputs"])
    assert sorted(os.listdir(outputs)) == sorted(OUTPUT_FILES)
    gt = os.path.join(shapes_root, "libra_shapes", "annotations", "instances_val.json")
    ap = recompute_box_ap(outputs, gt)  # over every image of the json, as COCOEvaluator scores
    assert abs(ap - run["metrics"]["AP"]) < 1e-6
    # the check can fail: a record whose AP was edited no longer recomputes
    assert abs(ap - (run["metrics"]["AP"] + 0.5)) > 0.1
    seg = run["provenance"]["segments"]
    assert len(seg) == 1 and not run["provenance"]["mixed"] and seg[0]["seconds"] > 0
