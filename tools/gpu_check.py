#!/usr/bin/env python
"""The GPU measurement, step by step, each bounded in time; every result packed in OUT.

Run by tools/gpu_check.sh (which installs the carried wheels first). Steps:

1. ``environment``: the card (name, driver), torch / torchvision / detectron2 versions, and
   whether this torch is one libra-d2 supports (else the run stops here);
2. ``cuda_tests``: ``tests/test_cuda.py`` (every CUDA test of the project);
3. ``bench``: ``benchmarks/run_all.py --device cuda --short 800``: R-50-FPN Faster R-CNN vs
   Libra R-CNN training iteration (float32 and float16 autocast), peak training memory,
   inference latency and images/s, the sampler against the reference's algorithm, BFP
   memory at 1x and 4x pixels;
4. ``retinanet``: the built-in RetinaNet and Libra RetinaNet at seeds 42, 1, 2, the six runs
   at once on the one GPU, on a schedule sized from a measured iteration time to fit the
   time that is left (``tools/ablate.py``).

OUT gets ``gpu_check.json`` (provenance: commit, card, driver, versions; each step's status,
seconds and figures), ``bench.json``, ``retinanet_ablation.json``/``.md`` and ``logs.tar.gz``:
at most 8 files. A step that runs out of its time is recorded as ``timeout`` and the next one
starts. ``--dry-run``: the same steps on CPU with tiny sizes (the proof on a machine without
a GPU; tools/gpu_dry_run.sh).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MIN_TORCH = (2, 0)  # torch.export and the CUDA paths the project tests need torch 2
RETINA = ("configs/builtin/retinanet_R_18_FPN_cpu.yaml", "configs/builtin/libra_retinanet_R_18_FPN_cpu.yaml")
# binary packages whose cp312 wheels must travel (checked in the dry run: presence and tag)
BINARY = ("pycocotools", "pyyaml", "matplotlib", "grpcio", "kiwisolver", "contourpy", "fonttools", "markupsafe")


def run_step(name, cmd, timeout, log_dir, env=None):
    """Run ``cmd`` with a time limit; returns the step record (status ok / failed / timeout)."""
    t0 = time.time()
    log = os.path.join(log_dir, f"{name}.log")
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                env=env or os.environ.copy()).returncode
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
    rec = {"status": status, "returncode": rc, "seconds": round(time.time() - t0, 1), "timeout_s": timeout,
           "command": " ".join(cmd)}
    with open(log) as f:
        rec["tail"] = f.read()[-1500:]
    return rec


def environment(dry_run):
    import torch
    import torchvision

    from libra_d2.utils.provenance import provenance

    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    env = {"provenance": provenance(), "torch_supported": version >= MIN_TORCH,
           "cuda_available": torch.cuda.is_available(), "torchvision": torchvision.__version__}
    if torch.cuda.is_available():
        env["card"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    elif not dry_run:
        env["error"] = "torch sees no CUDA device"
    return env


def carried_binaries(carry):
    """The cp312 wheels of the compiled requirements, by name: present and tagged for 3.12."""
    manifest = os.path.join(carry, "MANIFEST.json")
    if not os.path.isfile(manifest):
        return {"error": f"{manifest} missing: run tools/gpu_prepare.sh"}
    with open(manifest) as f:
        wheels = json.load(f)["wheels"]
    out = {}
    for name in BINARY:
        found = [w for w in wheels if os.path.basename(w["file"]).lower().startswith(name.replace("-", "_") + "-")]
        ok = any(w["python"] in ("cp312", "py3") and w["abi"] in ("cp312", "abi3", "none")
                 and ("x86_64" in w["platform"] or w["platform"] == "any") for w in found)
        out[name] = {"present": bool(found), "cp312": ok, "files": [w["file"] for w in found]}
    return out


def retinanet_schedule(seconds_left, s_per_iter, runs=6, slowdown=3.0, overhead_s=60.0, lo=100, hi=20000):
    """Iterations per run so that ``runs`` concurrent runs finish within ``seconds_left``:
    each at ``slowdown`` x the iteration time measured alone, after ``overhead_s`` of start-up
    and evaluation. Rounded down to a multiple of 50, within [lo, hi]."""
    if s_per_iter <= 0:
        raise ValueError(f"iteration time must be > 0, got {s_per_iter}")
    n = (seconds_left - overhead_s) / (s_per_iter * slowdown)
    return int(max(lo, min(hi, math.floor(n / 50 + 1e-9) * 50)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--carry", default="gpu_carry")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps (default 8 minutes)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: proves the script without a GPU")
    args = ap.parse_args(argv)
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(ROOT, "output", "gpu_check_work")
    shutil.rmtree(work, ignore_errors=True)
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    py = sys.executable
    device = "cpu" if args.dry_run else "cuda"
    report = {"dry_run": args.dry_run, "budget_s": args.budget, "steps": {}}
    steps = report["steps"]

    def left():
        return args.budget - (time.time() - t_start)

    def cap(seconds):  # a step's own limit on a GPU; the CPU dry run scales it with its budget
        return seconds * args.budget / 480.0 if args.dry_run else seconds

    def save():
        report["seconds"] = round(time.time() - t_start, 1)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(report, f, indent=1)

    env = environment(args.dry_run)
    report["environment"] = env
    if args.dry_run:
        report["carried_binaries"] = carried_binaries(args.carry)
    save()
    if not env["torch_supported"] or env.get("error"):
        print(f"[gpu_check] stopping: {env.get('error') or 'torch older than %d.%d' % MIN_TORCH}", flush=True)
        return 1

    # 2. the CUDA tests (on CPU they are skipped: the dry run proves that they are collected and run)
    print("[gpu_check] cuda_tests ...", flush=True)
    steps["cuda_tests"] = run_step("cuda_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                                                  "addopts=", "tests/test_cuda.py"], min(cap(150), max(30, left() * 0.3)), logs)
    save()

    # 3. the bench at COCO scale
    print(f"[gpu_check] bench ({steps['cuda_tests']['status']} before; {left():.0f} s left) ...", flush=True)
    bench_json = os.path.join(args.out, "bench.json")
    bench = [py, "benchmarks/run_all.py", "--device", device, "--only", "sampler,detector,bfp_memory", "--output",
             bench_json]
    bench += ["--short", "128", "--reps", "1", "--rounds", "1"] if args.dry_run else ["--short", "800", "--rounds", "3"]
    steps["bench"] = run_step("bench", bench, min(cap(200), max(30, left() * 0.45)), logs)
    save()

    # 4. the RetinaNet pair at seeds 42, 1, 2, the six runs at once
    print(f"[gpu_check] retinanet ({left():.0f} s left) ...", flush=True)
    calib_iters = 6 if args.dry_run else 40
    calib_dir = os.path.join(work, "calibration")
    base_opts = ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100000"]
    if args.dry_run:
        base_opts += ["DATASETS.TEST", "('libra_shapes_val_mini',)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                      "INPUT.MIN_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2"]
    calib = [py, "train_net.py", "--config-file", RETINA[1], *base_opts, "SOLVER.MAX_ITER", str(calib_iters),
             "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "DATASETS.TEST", "()", "OUTPUT_DIR", calib_dir]
    rec = run_step("retinanet_calibration", calib, min(cap(120), max(20, left() * 0.3)), logs)
    steps["retinanet_calibration"] = rec
    s_per_iter = None
    metrics = os.path.join(calib_dir, "metrics.json")
    if rec["status"] == "ok" and os.path.isfile(metrics):
        with open(metrics) as f:
            times = [json.loads(line).get("time") for line in f if line.strip()]
        times = [t for t in times if t]
        if times:
            s_per_iter = sorted(times)[len(times) // 2]
    rec["s_per_iter"] = s_per_iter
    if s_per_iter is None:
        steps["retinanet"] = {"status": "skipped", "reason": "no iteration time measured"}
        return finish(args, report, work, save)
    iters = 10 if args.dry_run else retinanet_schedule(left() - 20, s_per_iter)
    steps["retinanet"] = {"iterations": iters, "assumed_concurrent_slowdown": 3.0}
    first = int(iters * 0.8)
    second = min(iters - 1, max(first + 1, int(iters * 0.95)))
    schedule = ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({first},{second})",
                "SOLVER.WARMUP_ITERS", str(min(100, iters // 10))]
    abl_dir = os.path.join(work, "retinanet")
    ablate = [py, "tools/ablate.py", "--preset", "builtin-retinanet", "--no-components", "--seeds", "42", "1", "2",
              "--jobs", "6", "-o", abl_dir, "--", *base_opts, *schedule]
    abl_env = dict(os.environ, OMP_NUM_THREADS="2")
    steps["retinanet"].update(run_step("retinanet", ablate, max(20, left() - 15), logs, env=abl_env))
    for ext in ("json", "md"):
        src = os.path.join(abl_dir, f"ablation.{ext}")
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(args.out, f"retinanet_ablation.{ext}"))
    return finish(args, report, work, save)


def finish(args, report, work, save):
    save()
    with tarfile.open(os.path.join(args.out, "logs.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(work, "logs"), arcname="logs")
    print(f"[gpu_check] done in {report['seconds']:.0f} s: " + ", ".join(
        f"{k} {v.get('status')}" for k, v in report["steps"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
