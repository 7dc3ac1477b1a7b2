"""The GPU check's guards, on the CPU: what must hold for its one try on a device."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from dev.bench import run_all  # noqa: E402
from dev.gpu import gpu_check  # noqa: E402


def test_the_sync_check_passes_num_as_a_device_tensor_with_a_host_bound():
    # a Python int num would be copied to the device inside the call: a sync that
    # set_sync_debug_mode("error") turns into an exception on every CUDA run
    kwargs = run_all.sync_check_args(torch.device("cpu"), n=500, num=64)
    assert torch.is_tensor(kwargs["num"]) and kwargs["num"].dim() == 0
    assert kwargs["num"].device == kwargs["max_iou"].device
    assert kwargs["max_num"] == 64 and isinstance(kwargs["max_num"], int)
    from libra_d2.modeling.sampling import iou_balanced_negatives_select

    idx, keep = iou_balanced_negatives_select(**kwargs)
    assert idx[keep].numel() == 64


def test_a_failing_bench_section_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    def broken(device, reps, rounds):
        raise RuntimeError("no kernel for this device")

    seen = {}

    def fine(device, reps, rounds):
        # the earlier section's failure is already on disk when the next one starts
        seen["on_disk"] = json.loads((tmp_path / "b.json").read_text())
        return {"fine_figure": 1.5}

    monkeypatch.setitem(run_all.SECTIONS, "broken", broken)
    monkeypatch.setitem(run_all.SECTIONS, "fine", fine)
    results = run_all.main(["--only", "broken,fine", "--output", str(tmp_path / "b.json"), "--quiet"])
    assert results["errors"] == {"broken": "RuntimeError: no kernel for this device"}
    assert seen["on_disk"]["errors"]["broken"].startswith("RuntimeError")
    on_disk = json.loads((tmp_path / "b.json").read_text())
    assert on_disk["fine_figure"] == 1.5 and "runnable" in on_disk["load_before"] and on_disk["load_after"]
    with pytest.raises(SystemExit):
        run_all.main(["--only", "sampler,nonsense", "--output", str(tmp_path / "c.json"), "--quiet"])


def test_a_step_past_its_limit_is_killed_with_its_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # the child starts a grandchild that would outlive a kill of the child alone
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    rec = gpu_check.run_step("slow", ["bash", "-c", script], 2.0, str(tmp_path))
    assert rec["status"] == "timeout" and rec["seconds"] < 30
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    # gone (or a zombie already reaped by init): /proc has no live process of that pid
    state = None
    if os.path.exists(f"/proc/{pid}/stat"):
        state = open(f"/proc/{pid}/stat").read().split()[2]
    assert state in (None, "Z"), f"grandchild {pid} still running (state {state})"
    rec = gpu_check.run_step("quick", ["bash", "-c", "exit 3"], 10.0, str(tmp_path))
    assert rec["status"] == "failed" and rec["returncode"] == 3


def _carry(tmp_path, digest):
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "COMMIT").write_text("abc123\n")
    (carry / "MANIFEST.json").write_text(json.dumps({"commit": "abc123", "wheels": []}))
    (carry / "TREE_DIGEST").write_text(digest + "\n")
    return str(carry)


def test_preflight_names_each_mismatch_in_one_line(tmp_path):
    assert gpu_check.preflight(str(tmp_path / "absent"), dry_run=True)[0].startswith("carried folder")
    # a carried folder prepared for this tree passes (torch and torchvision here agree)
    assert gpu_check.preflight(_carry(tmp_path, gpu_check.tree_digest()), dry_run=True) == []
    other = tmp_path / "other"
    other.mkdir()
    problems = gpu_check.preflight(_carry(other, "0" * 64), dry_run=True)
    assert len(problems) == 1 and "differs from the one" in problems[0] and "abc123" in problems[0]
    os.remove(os.path.join(other, "carry", "MANIFEST.json"))
    assert any("MANIFEST.json missing" in p for p in gpu_check.preflight(str(other / "carry"), dry_run=True))


def test_the_tree_digest_follows_the_code(tmp_path):
    (tmp_path / "libra_d2").mkdir()
    (tmp_path / "libra_d2" / "a.py").write_text("x = 1\n")
    (tmp_path / "libra_d2" / "__pycache__").mkdir()
    d0 = gpu_check.tree_digest(str(tmp_path))
    (tmp_path / "libra_d2" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert gpu_check.tree_digest(str(tmp_path)) == d0  # bytecode does not count
    (tmp_path / "libra_d2" / "a.py").write_text("x = 2\n")
    assert gpu_check.tree_digest(str(tmp_path)) != d0


def test_a_broken_torchvision_is_recorded_not_fatal(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from dev.gpu import gpu_check; "
            "print(json.dumps(gpu_check.environment(True)))")
    out = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)), check=True)
    env = json.loads(out.stdout.strip().splitlines()[-1])
    assert env["error"].startswith("torchvision does not import: RuntimeError: operator torchvision::nms")


def test_retinanet_is_sized_from_the_concurrent_time_to_end_at_three_quarters(tmp_path):
    # 0.75 * 400 s - 60 s = 240 s at 0.1 s per iteration under the six-run concurrency: 2400
    assert gpu_check.retinanet_schedule(400, 0.1) == 2400
    assert gpu_check.retinanet_schedule(400, 1.0) == 200
    assert gpu_check.retinanet_schedule(100, 1.0) is None  # too little left: skipped, not cut
    assert gpu_check.retinanet_schedule(100, 1.0, overhead_s=10, lo=2, hi=12, step=1) == 12
    with pytest.raises(ValueError):
        gpu_check.retinanet_schedule(300, 0.0)
    runs = []
    for i, times in enumerate(([9, 9, 0.2, 0.3, 0.2], [9, 9, 0.5, 0.4, 0.6], [], [17.0])):
        d = tmp_path / f"run{i}"
        d.mkdir()
        if times:
            (d / "metrics.json").write_text("".join(json.dumps({"time": t}) + "\n" for t in times))
        runs.append(str(d))
    # the slowest run's median after the warm-up records governs when all six end
    assert gpu_check.concurrent_iteration_time(runs[:3]) == 0.5
    assert gpu_check.concurrent_iteration_time(runs[2:3]) is None
    # a short calibration writes one record (detectron2 writes every 20 iterations and at the end)
    assert gpu_check.concurrent_iteration_time(runs[3:]) == 17.0


def test_the_archive_holds_each_runs_own_outputs(tmp_path):
    import tarfile

    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / "bench.log").write_text("x")
    run = work / "retinanet" / "libra" / "seed42"
    run.mkdir(parents=True)
    for name in ("log.txt", "metrics.json", "eval_results.json", "model_final.pth"):
        (run / name).write_text("{}")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        gpu_check.archive_runs(tar, str(work))
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"work/logs/bench.log", "work/retinanet/libra/seed42/metrics.json",
            "work/retinanet/libra/seed42/log.txt", "work/retinanet/libra/seed42/eval_results.json"} <= names
    assert "work/retinanet/libra/seed42/model_final.pth" not in names


def test_carried_binaries_are_checked_by_tag(tmp_path):
    assert "error" in gpu_check.carried_binaries(str(tmp_path))  # no manifest: said so
    wheels = [{"file": "wheels/pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.whl", "python": "cp312",
               "abi": "abi3", "platform": "manylinux2014_x86_64"},
              {"file": "wheels/pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.whl", "python": "cp311",
               "abi": "cp311", "platform": "manylinux2014_x86_64"}]
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"commit": "x", "wheels": wheels}))
    found = gpu_check.carried_binaries(str(tmp_path))
    assert found["pycocotools"]["cp312"] and not found["pyyaml"]["cp312"] and not found["matplotlib"]["present"]
