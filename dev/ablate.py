#!/usr/bin/env python
"""Run an ablation (variants x seeds, paired by seed) through train_net.py and report it.

    # Faster R-CNN vs Libra R-CNN vs each Libra component alone, 3 seeds, built-in data
    python dev/ablate.py --preset builtin-rcnn --seeds 1 2 3 --output-dir output/ablation/rcnn
    # any configs; the first is the baseline unless --baseline names another
    python dev/ablate.py --config base=configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml \\
        --config libra=configs/COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml \\
        --seeds 1 2 3 --train-args "--num-gpus 8" --output-dir output/ablation/coco
    # one base config plus named switches (each "KEY VALUE ..." applied to the base)
    python dev/ablate.py --base configs/builtin/faster_rcnn_R_18_FPN_cpu.yaml \\
        --switch bfp="MODEL.BACKBONE.NAME build_resnet_bfp_backbone" --seeds 1 2 3 -o output/abl
    # options after "--" go to every run (e.g. a shorter schedule)
    python dev/ablate.py --preset builtin-rcnn -o output/abl -- SOLVER.MAX_ITER 400

``--jobs N`` runs N trainings at once (CPU: threads split between them; GPU users pass
``--train-args "--num-gpus K"`` and keep one job). Run ``(variant, seed)`` trains in ``OUT/<variant>/seed<seed>`` with ``SEED <seed>``. A run
whose ``eval_results.json`` exists is skipped (its record keeps the commit that trained it, from
``ablate_run.json``); one with a checkpoint but no results is
resumed (``--resume``, exact). One progress line per run. ``OUT/ablation.json`` (every run's
variant, config, options, seed, metrics) and ``OUT/ablation.md`` (mean ± std per variant;
paired differences with 95% Student-t intervals and verdicts) are rewritten after every run,
so an interrupted ablation still reports what it has. ``--report-only`` rebuilds them.
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dev.records.ablation import (  # noqa: E402
    PRESET_NAMES,
    Variant,
    build_report,
    identity_equivalence,
    load_metrics_by_task,
    preset_plan,
    primary_task,
    report_markdown,
    run_status,
)
from dev.records.run_record import collect_outputs, end_segment, start_segment  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESET_NAMES, metavar="PRESET",
                    help="one of: " + ", ".join(PRESET_NAMES) + " (builtin = builtin-rcnn + builtin-retinanet; "
                    "builtin-heads = builtin-cascade + builtin-mask + builtin-fast; *-sampling: Faster R-CNN vs "
                    "Libra sampling vs OHEM; *-rpn: RPN vs Libra RPN by proposal recall)")
    ap.add_argument("--no-components", action="store_true", help="with --preset: only baseline and full Libra")
    ap.add_argument("--config", action="append", default=[], metavar="NAME=PATH", help="a variant (repeatable)")
    ap.add_argument("--base", help="base config for --switch variants (its own variant is named 'baseline')")
    ap.add_argument("--switch", action="append", default=[], metavar='NAME="KEY VALUE ..."',
                    help="a variant: the base config plus these options (repeatable)")
    ap.add_argument("--baseline", help="variant the others are compared with (default: 'baseline' or the first)")
    ap.add_argument("--only", help="comma-separated variant names to run (the report keeps every finished run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default 1 2 3; with --report-only alone, the seeds of the earlier run")
    ap.add_argument("-o", "--output-dir", required=True)
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once (each gets cores/jobs threads unless OMP_NUM_THREADS is set); "
                    "on a 2-core CPU, 2 single-thread runs finish ~20%% sooner than one after another")
    ap.add_argument("--train-args", default="", help='passed to train_net.py, e.g. "--num-gpus 8"')
    ap.add_argument("--report-only", action="store_true", help="only rebuild ablation.json/md from finished runs")
    ap.add_argument("--title", default=None)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="-- KEY VALUE ... applied to every run")
    args = ap.parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    return args


def make_plan(args):
    variants = []
    if args.preset:
        variants += preset_plan(args.preset, components=not args.no_components)
    n_preset = len(variants)
    if args.base:
        variants.append(Variant("baseline", args.base))
    for spec in args.config:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"ablate: --config needs NAME=PATH, got {spec!r}")
        variants.append(Variant(name, path))
    for spec in args.switch:
        name, _, opts = spec.partition("=")
        if not args.base:
            raise SystemExit("ablate: --switch needs --base")
        variants.append(Variant(name, args.base, shlex.split(opts)))
    if not variants and args.report_only:  # the plan of the earlier run in OUT
        previous = os.path.join(args.output_dir, "ablation.json")
        if not os.path.isfile(previous):
            raise SystemExit(f"ablate: --report-only without variants needs {previous} from an earlier run")
        with open(previous) as f:
            data = json.load(f)
        variants = [Variant(v["name"], v["config_file"], v.get("opts", []), baseline=v.get("baseline"))
                    for v in data["variants"]]
        if args.seeds is None:
            args.seeds = sorted({r["seed"] for r in data.get("runs", [])}) or [1, 2, 3]
        return variants, {v.name: v.baseline for v in variants}
    if not variants:
        raise SystemExit("ablate: nothing to run: give --preset, --config or --base/--switch")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"ablate: variant names repeat: {names}")
    for v in variants:
        path = v.config_file if os.path.isabs(v.config_file) else os.path.join(ROOT, v.config_file)
        if not os.path.isfile(path):
            raise SystemExit(f"ablate: variant {v.name}: config file {v.config_file} does not exist")
    default = args.baseline or ("baseline" if "baseline" in names else names[0])
    if default not in names:
        raise SystemExit(f"ablate: --baseline {default} is not one of {names}")
    preset_names = {v.name for v in variants[:n_preset]}
    for v in variants:
        if v.name == default:
            v.baseline = None
        elif args.baseline or v.name not in preset_names:  # preset variants keep their own baseline
            v.baseline = default
    baselines = {v.name: v.baseline for v in variants}
    return variants, baselines


def write_outputs(out_dir, variants, baseline, runs, title):
    """ablation.json / ablation.md: the report of the primary task (box AP; proposal recall
    for proposal-only models), and where runs also evaluated other tasks (Mask R-CNN:
    ``segm``), one more report per task (``reports_by_task`` in the json, a further section
    of the markdown)."""
    tasks = {t for r in runs for t in (r.get("metrics_by_task") or {})}
    if any(r.get("metrics") and "AR@100" in r["metrics"] and "AP" not in r["metrics"] for r in runs):
        tasks.add("box_proposals")
    main_task = primary_task(tasks)
    equivalent = identity_equivalence(load_identity_records(IDENTITY))
    report = build_report(runs, baseline, task=main_task, equivalent=equivalent)
    extra = sorted(tasks - {main_task})
    by_task = {}
    for task in extra:
        task_runs = [dict(r, metrics=(r.get("metrics_by_task") or {}).get(task)) for r in runs]
        by_task[task] = build_report(task_runs, baseline, task=task, equivalent=equivalent)
    data = {"baseline": baseline, "variants": [v.to_dict() for v in variants], "runs": runs, "report": report}
    if by_task:
        data["reports_by_task"] = by_task
    tmp = os.path.join(out_dir, "ablation.json.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "ablation.json"))
    title = title or f"Ablation in {out_dir}"
    md = report_markdown(report, title)
    for task, rep in by_task.items():
        md += "\n" + report_markdown(rep, f"{title}: {task}", task=task)
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(md)
    return report


# committed seeded-identity hashes: two commits they prove equivalent pair (docs/ablation.md)
IDENTITY = os.path.join(ROOT, "results", "seeded_identity.json")


def load_identity_records(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


from dev.records.run_record import RUN_INFO  # noqa: E402  (per run folder: its provenance, by segment)


def run_opts(config_file, seed, out):
    """The seed and output folder of one run in the config's own override syntax: yacs
    ``SEED S OUTPUT_DIR OUT``, LazyConfig (``.py``) ``train.seed=S train.output_dir=OUT``."""
    if config_file.endswith(".py"):
        return [f"train.seed={seed}", f"train.output_dir={out}"]
    return ["SEED", str(seed), "OUTPUT_DIR", out]


def option_value(opts, key, default):
    """The value given for ``key`` in a yacs option list (the last one wins)."""
    found = default
    for k, v in zip(opts, opts[1:]):
        if k == key:
            found = v
    return found


def run_one(args, v, seed, tag, only, env):
    """Train/resume one (variant, seed) unless finished; returns its run record."""
    out = os.path.join(args.output_dir, v.name, f"seed{seed}")
    opts = v.opts + list(args.opts) + run_opts(v.config_file, seed, out)
    run = {"name": v.name, "seed": seed, "config_file": v.config_file, "opts": v.opts + list(args.opts),
           "output_dir": out, "metrics": None}
    status = run_status(out)
    if status != "done" and not args.report_only and (only is None or v.name in only):
        cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", v.config_file, "--resume",
               *shlex.split(args.train_args), *opts]
        os.makedirs(out, exist_ok=True)
        print(f"{tag} {'resuming' if status == 'partial' else 'training'} ...", flush=True)
        threads = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else None
        # provenance when the segment starts (each resume appends one; a change marks the run mixed)
        start_segment(out, threads=threads, device=option_value(opts, "MODEL.DEVICE", "cpu"))
        t0 = time.time()
        with open(os.path.join(out, "ablate_stdout.log"), "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        run["seconds"] = round(time.time() - t0, 1)
        end_segment(out, run["seconds"])
        if rc != 0:
            run["error"] = f"train_net.py exit code {rc}; see {out}/ablate_stdout.log"
            print(f"{tag} FAILED ({run['error']})", flush=True)
        status = run_status(out)
    if status == "done":
        # the raw outputs beside the record (what its figures are recomputed from)
        outputs = os.path.join(args.output_dir, "outputs", f"{v.name}_seed{seed}")
        if collect_outputs(out, outputs):
            run["outputs"] = os.path.relpath(outputs, args.output_dir)
        if os.path.isfile(os.path.join(out, RUN_INFO)):
            with open(os.path.join(out, RUN_INFO)) as f:
                info = json.load(f)
            run["commit"] = info.get("commit")
            run["provenance"] = info
        by_task = load_metrics_by_task(out)
        task = primary_task(by_task)
        run["metrics"] = by_task.get(task, {})
        if set(by_task) - {task}:
            run["metrics_by_task"] = by_task
        first = "AP" if task != "box_proposals" else "AR@100"
        print(f"{tag} {first} {run['metrics'].get(first, float('nan')):.2f}"
              + (f" ({run['seconds']:.0f} s)" if "seconds" in run else " (finished earlier)"), flush=True)
    elif "error" not in run:
        print(f"{tag} {status}, not run", flush=True)
    return run


def main(argv=None):
    args = parse_args(argv)
    variants, baseline = make_plan(args)
    if args.seeds is None:
        args.seeds = [1, 2, 3]
    os.makedirs(args.output_dir, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    jobs = [(v, s) for s in args.seeds for v in variants]  # seed-major: complete pairs appear early
    env = dict(os.environ)
    if args.jobs > 1 and "OMP_NUM_THREADS" not in env:  # share the cores between the parallel runs
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    runs = [None] * len(jobs)
    lock = threading.Lock()

    def work(i):
        v, seed = jobs[i]
        run = run_one(args, v, seed, f"[ablate] {i + 1}/{len(jobs)} {v.name} seed={seed}:", only, env)
        with lock:
            runs[i] = run
            write_outputs(args.output_dir, variants, baseline, [r for r in runs if r], args.title)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for f in [pool.submit(work, i) for i in range(len(jobs))]:
            f.result()
    report = write_outputs(args.output_dir, variants, baseline, runs, args.title)
    print(report_markdown(report, args.title or "Ablation"))
    failed = [r for r in runs if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
