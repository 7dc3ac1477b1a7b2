#!/usr/bin/env python
"""The GPU measurement, step by step, each bounded in time; every result packed in OUT.

Run by dev/gpu/gpu_check.sh (which installs the carried wheels first). Steps:

1. ``environment``: the card (name, driver), torch / torchvision / detectron2 versions, and
   whether this torch is one libra-d2 supports (else the run stops here);
2. ``cuda_tests``: ``tests/test_cuda.py`` (every CUDA test of the project);
3. ``bench``: ``dev/bench/run_all.py --device cuda --short 800``: R-50-FPN Faster R-CNN vs
   Libra R-CNN training iteration (float32 and float16 autocast), peak training memory,
   inference latency and images/s, the sampler against the reference's algorithm, BFP
   memory at 1x and 4x pixels;
4. ``retinanet``: the built-in RetinaNet and Libra RetinaNet at seeds 42, 1, 2, the six runs
   at once on the one GPU, on a schedule sized from a measured iteration time to fit the
   time that is left (``dev/ablate.py``).

OUT gets ``gpu_check.json`` (provenance: commit, card, driver, versions; each step's status,
seconds and figures), ``bench.json``, ``retinanet_ablation.json``/``.md`` and ``logs.tar.gz``:
at most 8 files. A step that runs out of its time is recorded as ``timeout`` and the next one
starts. ``--dry-run``: the same steps on CPU with tiny sizes (the proof on a machine without
a GPU; dev/gpu/gpu_dry_run.sh).
"""
import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

MIN_TORCH = (2, 0)  # torch.export and the CUDA paths the project tests need torch 2
RETINA = ("configs/builtin/retinanet_R_18_FPN_cpu.yaml", "configs/builtin/libra_retinanet_R_18_FPN_cpu.yaml")
# binary packages whose cp312 wheels must travel (checked in the dry run: presence and tag)
BINARY = ("pycocotools", "pyyaml", "matplotlib", "grpcio", "kiwisolver", "contourpy", "fonttools", "markupsafe")


def kill_group(pgid, grace=5.0):
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run_step(name, cmd, timeout, log_dir, env=None):
    """Run ``cmd`` in a process group of its own with a time limit; returns the step record
    (status ok / failed / timeout). At the limit, and after a normal end too, the whole group
    is killed: data-loader workers and concurrent training runs leave nothing behind that
    would hold the GPU or skew the next step."""
    t0 = time.time()
    log = os.path.join(log_dir, f"{name}.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        kill_group(proc.pid)
        proc.wait()
    rec = {"status": status, "returncode": rc, "seconds": round(time.time() - t0, 1), "timeout_s": round(timeout, 1),
           "command": " ".join(cmd)}
    with open(log) as f:
        rec["tail"] = f.read()[-1500:]
    return rec


def environment(dry_run):
    """The card, driver and versions. Each import is guarded: a torchvision that does not
    import (a torch it was not built for) is recorded as the error, not a crash."""
    env = {}
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - recorded; the run stops with this line
        env["error"] = f"torch does not import: {type(e).__name__}: {e}"
        return env
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    env.update({"torch": torch.__version__, "torch_supported": version >= MIN_TORCH,
                "cuda_available": torch.cuda.is_available()})
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        env["error"] = f"torchvision does not import: {type(e).__name__}: {e}"
        return env
    try:
        from dev.records.provenance import provenance

        env["provenance"] = provenance()
    except Exception as e:  # noqa: BLE001
        env["error"] = f"libra_d2 does not import: {type(e).__name__}: {e}"
        return env
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


# what the tree digest covers: the code the check runs (no .git travels, so the digest, not
# a commit, ties the carried folder to the tree)
DIGEST_PATHS = ("libra_d2", "configs", "tools", "dev", "tests", "train_net.py", "setup.cfg", "pyproject.toml")


def tree_digest(root=ROOT):
    """sha256 over the sorted (path, content hash) of every file under DIGEST_PATHS, skipping
    bytecode and dot-folders: equal on two machines exactly when the code is."""
    h = hashlib.sha256()
    files = []
    for top in DIGEST_PATHS:
        path = os.path.join(root, top)
        if os.path.isfile(path):
            files.append(top)
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            files += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if not f.endswith(".pyc")]
    for rel in sorted(files):
        with open(os.path.join(root, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def preflight(carry, dry_run, root=ROOT):
    """Checks before anything is installed or run; returns one clear line per problem."""
    from importlib import metadata

    problems = []
    if not os.path.isdir(carry):
        return [f"carried folder {carry} missing: carry it (run make gpu-prepare here, then name gpu_carry in carry)"]
    for name in ("COMMIT", "TREE_DIGEST", "MANIFEST.json"):
        if not os.path.isfile(os.path.join(carry, name)):
            problems.append(f"{carry}/{name} missing: the carried folder is incomplete; rerun make gpu-prepare")
    digest_file = os.path.join(carry, "TREE_DIGEST")
    if os.path.isfile(digest_file):
        with open(digest_file) as f:
            want = f.read().strip()
        if want != tree_digest(root):
            commit = open(os.path.join(carry, "COMMIT")).read().strip() if os.path.isfile(os.path.join(carry, "COMMIT")) else "?"
            problems.append(f"the tree's code differs from the one {carry} was prepared for (commit {commit}): "
                            "rerun make gpu-prepare on this tree")
    try:
        torch_version = metadata.version("torch")
        wanted = [r for r in (metadata.requires("torchvision") or [])
                  if r.replace(" ", "").startswith("torch==")]
        if wanted:
            pin = wanted[0].replace(" ", "").split("==", 1)[1].split(";")[0]
            if pin.split("+")[0] != torch_version.split("+")[0]:
                problems.append(f"torchvision {metadata.version('torchvision')} requires torch {pin} but torch "
                                f"{torch_version} is installed")
    except metadata.PackageNotFoundError as e:
        problems.append(f"package not installed: {e}")
    if not dry_run:
        try:
            import torch

            if not torch.cuda.is_available():
                problems.append("torch sees no CUDA device")
        except Exception as e:  # noqa: BLE001
            problems.append(f"torch does not import: {type(e).__name__}: {e}")
    return problems


def carried_binaries(carry):
    """The cp312 wheels of the compiled requirements, by name: present and tagged for 3.12."""
    manifest = os.path.join(carry, "MANIFEST.json")
    if not os.path.isfile(manifest):
        return {"error": f"{manifest} missing: run dev/gpu/gpu_prepare.sh"}
    with open(manifest) as f:
        wheels = json.load(f)["wheels"]
    out = {}
    for name in BINARY:
        found = [w for w in wheels if os.path.basename(w["file"]).lower().startswith(name.replace("-", "_") + "-")]
        ok = any(w["python"] in ("cp312", "py3") and w["abi"] in ("cp312", "abi3", "none")
                 and ("x86_64" in w["platform"] or w["platform"] == "any") for w in found)
        out[name] = {"present": bool(found), "cp312": ok, "files": [w["file"] for w in found]}
    return out


def retinanet_schedule(seconds_left, s_per_iter, fraction=0.75, overhead_s=60.0, lo=100, hi=20000, step=50):
    """Iterations per run so that the concurrent runs end at ``fraction`` of ``seconds_left``,
    after ``overhead_s`` of start-up and evaluation, with ``s_per_iter`` measured under that
    same concurrency. Rounded down to a multiple of ``step``, at most ``hi``; None when fewer
    than ``lo`` fit (the step is skipped rather than cut)."""
    if s_per_iter <= 0:
        raise ValueError(f"iteration time must be > 0, got {s_per_iter}")
    n = (seconds_left * fraction - overhead_s) / s_per_iter
    n = math.floor(n / step + 1e-9) * step
    if n < lo:
        return None
    return int(min(hi, n))


def concurrent_iteration_time(run_dirs, skip=2):
    """The slowest run's median seconds per iteration from the ``metrics.json`` of runs that
    ran at the same time (each record's ``time`` is already a windowed median; the first
    ``skip`` records are left out where more remain); None when no run recorded one."""
    per_run = []
    for d in run_dirs:
        path = os.path.join(d, "metrics.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            times = [json.loads(line).get("time") for line in f if line.strip()]
        times = [t for t in times if t]
        times = sorted(times[skip:] if len(times) > skip else times)
        if times:
            per_run.append(times[len(times) // 2])
    return max(per_run) if per_run else None


def archive_runs(tar, work):
    """Every run's own log, metrics and evaluation under ``work`` into the archive."""
    for dirpath, _, filenames in os.walk(work):
        for f in sorted(filenames):
            if f in ("log.txt", "metrics.json", "eval_results.json", "ablate_run.json") or f.endswith(".log"):
                path = os.path.join(dirpath, f)
                tar.add(path, arcname=os.path.relpath(path, os.path.dirname(work)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--carry", default="gpu_carry")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps (default 8 minutes)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: proves the script without a GPU")
    ap.add_argument("--preflight", action="store_true", help="only the checks before the install; exit 3 on a problem")
    ap.add_argument("--write-digest", metavar="FILE", help="write the tree digest to FILE and exit (gpu_prepare.sh)")
    args = ap.parse_args(argv)
    if args.write_digest:
        with open(args.write_digest, "w") as f:
            f.write(tree_digest() + "\n")
        return 0
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    report_path = os.path.join(args.out, "gpu_check.json")
    if args.preflight:
        problems = preflight(args.carry, args.dry_run)
        for p in problems:
            print(f"[gpu_check] preflight: {p}", flush=True)
        with open(report_path, "w") as f:
            json.dump({"preflight": {"ok": not problems, "problems": problems}}, f, indent=1)
        return 3 if problems else 0
    report = {}
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)  # the preflight's record stays
    work = os.path.join(ROOT, "output", "gpu_check_work")
    shutil.rmtree(work, ignore_errors=True)
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    py = sys.executable
    device = "cpu" if args.dry_run else "cuda"
    report.update({"dry_run": args.dry_run, "budget_s": args.budget, "steps": {}})
    steps = report["steps"]

    def left():
        return args.budget - (time.time() - t_start)

    def cap(seconds):  # a step's own limit on a GPU; the CPU dry run scales it with its budget
        return seconds * args.budget / 480.0 if args.dry_run else seconds

    def save():
        report["seconds"] = round(time.time() - t_start, 1)
        tmp = report_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, report_path)

    save()  # something comes back even if an import below kills the process
    env = environment(args.dry_run)
    report["environment"] = env
    if args.dry_run:
        report["carried_binaries"] = carried_binaries(args.carry)
    save()
    if env.get("error") or not env.get("torch_supported"):
        print(f"[gpu_check] stopping: {env.get('error') or 'torch older than %d.%d' % MIN_TORCH}", flush=True)
        return finish(args, report, work, save, rc=1)

    # 2. the CUDA tests (on CPU they are skipped: the dry run proves that they are collected and run)
    print("[gpu_check] cuda_tests ...", flush=True)
    steps["cuda_tests"] = run_step("cuda_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                                                  "addopts=", "tests/test_cuda.py"], min(cap(150), max(30, left() * 0.3)), logs)
    save()

    # 3. the bench at COCO scale (each section guarded and written as it ends)
    print(f"[gpu_check] bench ({steps['cuda_tests']['status']} before; {left():.0f} s left) ...", flush=True)
    bench_json = os.path.join(args.out, "bench.json")
    bench = [py, "dev/bench/run_all.py", "--device", device, "--only", "sampler,detector,bfp_memory", "--output",
             bench_json]
    bench += ["--short", "128", "--reps", "1", "--rounds", "1"] if args.dry_run else ["--short", "800", "--rounds", "3"]
    steps["bench"] = run_step("bench", bench, min(cap(200), max(30, left() * 0.45)), logs)
    if os.path.isfile(bench_json):
        with open(bench_json) as f:
            steps["bench"]["section_errors"] = json.load(f).get("errors", {})
    save()

    # 4. the RetinaNet pair at seeds 42, 1, 2: the six runs at once, sized from a calibration
    # made under that same concurrency (six runs, two threads each)
    run_retinanet(args, steps, work, logs, py, device, left, cap, save)
    return finish(args, report, work, save)


def run_retinanet(args, steps, work, logs, py, device, left, cap, save):
    seeds = ("42", "1", "2")
    jobs = len(seeds) * len(RETINA)
    threads_env = dict(os.environ, OMP_NUM_THREADS="2")
    base_opts = ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100000"]
    if args.dry_run:
        base_opts += ["DATASETS.TEST", "('libra_shapes_val_mini',)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                      "INPUT.MIN_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2"]
    sizing = {"lo": 2, "hi": 12, "step": 1, "overhead_s": 10.0} if args.dry_run else {}
    calib_iters = 6 if args.dry_run else 40
    print(f"[gpu_check] retinanet calibration, {jobs} runs at once ({left():.0f} s left) ...", flush=True)
    calib_dirs, launches = [], []
    for i in range(jobs):
        d = os.path.join(work, "calibration", f"run{i}")
        calib_dirs.append(d)
        cmd = [py, "train_net.py", "--config-file", RETINA[i % len(RETINA)], *base_opts, "SOLVER.MAX_ITER",
               str(calib_iters), "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "DATASETS.TEST", "()",
               "SEED", seeds[i // len(RETINA)], "OUTPUT_DIR", d]
        launches.append(" ".join(shlex.quote(c) for c in cmd) + f" > {shlex.quote(d)}.out 2>&1 &")
    script = "mkdir -p " + " ".join(shlex.quote(d) for d in calib_dirs) + "\n" + "\n".join(launches) + "\nwait\n"
    rec = run_step("retinanet_calibration", ["bash", "-c", script], min(cap(150), max(20, left() * 0.3)), logs,
                   env=threads_env)
    rec["s_per_iter_concurrent"] = concurrent_iteration_time(calib_dirs)
    steps["retinanet_calibration"] = rec
    save()
    if rec["s_per_iter_concurrent"] is None:
        steps["retinanet"] = {"status": "skipped", "reason": "no iteration time measured under concurrency"}
        return
    iters = retinanet_schedule(left() - 20, rec["s_per_iter_concurrent"], **sizing)
    if iters is None:
        steps["retinanet"] = {"status": "skipped", "reason": f"too little time left ({left():.0f} s) for a useful schedule"}
        return
    steps["retinanet"] = {"iterations": iters, "planned_s": round(iters * rec["s_per_iter_concurrent"], 1)}
    first = int(iters * 0.8)
    second = min(iters - 1, max(first + 1, int(iters * 0.95)))
    schedule = ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({first},{second})",
                "SOLVER.WARMUP_ITERS", str(min(100, iters // 10)),
                # an evaluation half-way: a run cut at its limit still returns what it reached
                "TEST.EVAL_PERIOD", str(max(1, iters // 2))]
    abl_dir = os.path.join(work, "retinanet")
    ablate = [py, "dev/ablate.py", "--preset", "builtin-retinanet", "--no-components", "--seeds", *seeds,
              "--jobs", str(jobs), "-o", abl_dir, "--", *base_opts, *schedule]
    print(f"[gpu_check] retinanet: {jobs} runs of {iters} iterations ({left():.0f} s left) ...", flush=True)
    steps["retinanet"].update(run_step("retinanet", ablate, max(20, left() - 15), logs, env=threads_env))
    for ext in ("json", "md"):
        src = os.path.join(abl_dir, f"ablation.{ext}")
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(args.out, f"retinanet_ablation.{ext}"))
    save()


def finish(args, report, work, save, rc=0):
    save()
    with tarfile.open(os.path.join(args.out, "logs.tar.gz"), "w:gz") as tar:
        archive_runs(tar, work)
    print(f"[gpu_check] done in {report['seconds']:.0f} s: " + ", ".join(
        f"{k} {v.get('status')}" for k, v in report["steps"].items()), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
