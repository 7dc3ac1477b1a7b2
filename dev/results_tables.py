#!/usr/bin/env python
"""Print (or check) the README's results tables from the committed data files.

    python dev/results_tables.py            # print the generated blocks
    python dev/results_tables.py --write    # replace the blocks in README.md and docs/performance.md
    python dev/results_tables.py --check    # exit 1 if a block differs

README.md's block sits between ``<!-- results:begin -->`` and ``<!-- results:end -->``;
docs/performance.md's (``<!-- bench:begin -->`` ... ``<!-- bench:end -->``) holds one table per
committed bench file, ``results/bench/*.json`` (``make bench``'s output, one file per machine).
Per configuration: seeds, mean ± sample std of box AP (proposal recall for proposal-only
models), the commits and processors the runs record; then each paired comparison the data
allow, with the pairing rule of the ablation report (one processor class, one commit or
commits proven equivalent by results/seeded_identity.json): pairs, mean difference, 95%
Student-t interval, verdict, or why no pair formed.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dev.records.ablation import build_report, identity_equivalence, summarize_metric  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# the headline sets, one data file per processor class: (file, class as the pair labels name it)
HEADLINE_SETS = [("ablation_headline_amd_avx512.json", "AMD EPYC AVX-512"), ("ablation_headline_amd_avx2.json",
                                                                            "AMD EPYC AVX2")]
HEADLINE_ROWS = [("baseline", "Faster R-CNN"), ("libra", "Libra R-CNN"), ("sampling", "+ balanced sampling only"),
                 ("rpn_cap", "+ RPN negative cap only"), ("ohem", "Faster R-CNN with OHEM")]
HEADLINE_PAIRS = [("libra", "baseline", "Libra R-CNN vs Faster R-CNN"),
                  ("sampling", "baseline", "balanced sampling vs Faster R-CNN"),
                  ("libra", "sampling", "Libra R-CNN vs balanced sampling"),
                  ("rpn_cap", "baseline", "RPN negative cap vs Faster R-CNN"), ("ohem", "baseline", "OHEM vs Faster R-CNN")]
# (label, data file under docs/, variant name in it)
ROWS = [(label, name, v) for name, _ in HEADLINE_SETS for v, label in HEADLINE_ROWS] + [
    ("Faster R-CNN, small RegNet-FPN", "ablation_regnet_amd.json", "baseline"),
    ("Libra R-CNN, small RegNet-FPN", "ablation_regnet_amd.json", "libra"),
    ("Faster R-CNN (earlier runs)", "ablation_headline.json", "baseline"),
    ("Libra R-CNN (earlier runs)", "ablation_headline.json", "libra"),
    ("+ balanced sampling only (earlier runs)", "ablation_headline.json", "sampling"),
    ("+ RPN negative cap only (earlier runs)", "ablation_rpn_normaliser.json", "rpn_cap"),
    ("Faster R-CNN with OHEM (earlier runs)", "ablation_sampling.json", "ohem"),
    ("RetinaNet, 850 iterations (earlier runs)", "ablation_retinanet_cpu.json", "retinanet_baseline"),
    ("Libra RetinaNet, 850 iterations (earlier runs)", "ablation_retinanet_cpu.json", "retinanet_libra"),
]
# (label, data file, variant, its baseline)
PAIRS = [(f"{label} ({cls})", name, v, b) for name, cls in HEADLINE_SETS for v, b, label in HEADLINE_PAIRS] + [
    ("Libra R-CNN vs Faster R-CNN, small RegNet-FPN", "ablation_regnet_amd.json", "libra", "baseline"),
    ("Libra R-CNN vs Faster R-CNN (earlier runs)", "ablation_headline.json", "libra", "baseline"),
    ("balanced sampling vs Faster R-CNN (earlier runs)", "ablation_headline.json", "sampling", "baseline"),
    ("Libra RetinaNet vs RetinaNet (earlier runs)", "ablation_retinanet_cpu.json", "retinanet_libra",
     "retinanet_baseline"),
]


def load(name):
    path = os.path.join(ROOT, "results", name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _runs(data, variant):
    return [r for r in (data or {}).get("runs", []) if r.get("name") == variant and r.get("metrics")]


def _processor(r):
    p = (r.get("provenance") or {}).get("processor")
    if not p:
        return "not recorded"
    if p.get("flags") is None or p.get("cpu_capability") is None:
        return f"{p.get('model')} (instruction set not recorded)"
    return f"{p.get('model')} ({p.get('cpu_capability')}; {'/'.join(p['flags']) or 'no listed flags'})"


def _commit(r):
    c = (r.get("provenance") or {}).get("commit") or r.get("commit") or "not recorded"
    return c[:7] if len(c) == 40 else c


def _fmt(s):
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")


def _current_pairs():
    """The headline comparisons that stand today: each paired at two seeds or more."""
    identity = load("seeded_identity.json") or []
    equivalent = identity_equivalence(identity)
    out = []
    for name, cls in HEADLINE_SETS + [("ablation_regnet_amd.json", "AMD EPYC AVX2")]:
        data = load(name)
        pairs = HEADLINE_PAIRS if name != "ablation_regnet_amd.json" else [
            ("libra", "baseline", "Libra R-CNN vs Faster R-CNN, small RegNet-FPN")]
        for variant, base, label in pairs:
            if not _runs(data, variant) or not _runs(data, base):
                continue
            rep = build_report(_runs(data, variant) + _runs(data, base), {variant: base, base: None},
                               equivalent=equivalent)
            d = rep["differences"][variant]["AP"]
            if d["n"] >= 2:
                per_seed = {r["seed"]: r["metrics"]["AP"] for r in _runs(data, variant)}
                per_base = {r["seed"]: r["metrics"]["AP"] for r in _runs(data, base)}
                seeds = [s for s in d.get("seeds") or sorted(per_seed) if s in per_base]
                out.append({"label": label, "class": cls, "file": name, "diff": d, "seeds": seeds,
                            "variant": [per_seed[s] for s in seeds], "base": [per_base[s] for s in seeds]})
    return out


def generate_verdicts():
    """The README's results: the current verdicts, one row per comparison."""
    lines = ["| comparison | processor class | seeds | ΔAP | 95% interval | verdict |", "|---|---|---|---|---|---|"]
    for p in _current_pairs():
        d = p["diff"]
        seeds = ", ".join(str(s) for s in p["seeds"])
        lines.append(f"| {p['label']} | {p['class']} | {seeds} | {d['mean']:+.2f} | "
                     f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] | {d['verdict']} |")
    return "\n".join(lines) + "\n"


PLOT = os.path.join("docs", "verdicts.png")


def plot_verdicts(path=None):
    """docs/verdicts.png: each current comparison's paired runs, one line per seed; the
    plotted values travel in the PNG's ``Description`` text (json) so a test can check them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _current_pairs()
    fig, axes = plt.subplots(1, len(pairs), figsize=(2.1 * len(pairs), 3.2), sharey=True, dpi=110)
    for ax, p in zip(axes, pairs):
        for s, a, b in zip(p["seeds"], p["base"], p["variant"]):
            ax.plot([0, 1], [a, b], marker="o", color="tab:green" if b > a else "tab:red", lw=1)
        base_name, new_name = p["label"].split(" vs ")[1].split(",")[0], p["label"].split(" vs ")[0]
        ax.set_xticks([0, 1], [base_name, new_name], rotation=20, fontsize=7)
        ax.set_title(f"{p['class']}\nΔAP {p['diff']['mean']:+.2f} ({p['diff']['verdict'].split(' at ')[0]})", fontsize=7)
        ax.set_xlim(-0.3, 1.3)
    axes[0].set_ylabel("box AP, built-in val (each line: one seed)")
    fig.tight_layout()
    data = [{"label": p["label"], "class": p["class"], "seeds": p["seeds"], "base": p["base"], "variant": p["variant"]}
            for p in pairs]
    fig.savefig(path or os.path.join(ROOT, PLOT), metadata={"Description": json.dumps(data)})
    plt.close(fig)
    return data


def generate():
    lines = ["| config | seeds | AP | commits | processor | data |", "|---|---|---|---|---|---|"]
    for label, name, variant in ROWS:
        runs = _runs(load(name), variant)
        if not runs:
            continue
        seeds = ", ".join(str(r["seed"]) for r in runs)
        ap = summarize_metric([r["metrics"].get("AP") for r in runs])
        commits = ", ".join(sorted({_commit(r) for r in runs}))
        procs = "; ".join(sorted({_processor(r) for r in runs}))
        lines.append(f"| {label} | {seeds} | {_fmt(ap)} | {commits} | {procs} | `results/{name}` |")
    identity = load("seeded_identity.json") or []
    equivalent = identity_equivalence(identity)
    lines += ["", "| comparison | pairs | ΔAP | 95% interval | verdict |", "|---|---|---|---|---|"]
    for label, name, variant, base in PAIRS:
        data = load(name)
        if not _runs(data, variant) or not _runs(data, base):
            continue
        runs = _runs(data, variant) + _runs(data, base)
        rep = build_report(runs, {variant: base, base: None}, equivalent=equivalent)
        d = rep["differences"][variant]
        ap = d["AP"]
        unpaired = sorted(set((d.get("unpaired") or {}).values()))
        if ap["n"] == 0:
            lines.append(f"| {label} | 0 | | | not paired: {'; '.join(unpaired)} |")
            continue
        ci = f"[{ap['ci'][0]:+.2f}, {ap['ci'][1]:+.2f}]" if ap["ci"] else "n/a"
        note = f" ({len(d['unpaired'])} seed(s) not paired: {'; '.join(unpaired)})" if unpaired else ""
        lines.append(f"| {label} | {ap['n']} | {ap['mean']:+.2f} | {ci} | {ap['verdict']}{note} |")
    return "\n".join(lines) + "\n"


def bench_files():
    folder = os.path.join(ROOT, "results", "bench")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json")) \
        if os.path.isdir(folder) else []


def generate_bench():
    """One table per committed bench file, headed by where and from what it was measured."""
    from dev.bench.run_all import bench_table

    parts = []
    for path in bench_files():
        with open(path) as f:
            res = json.load(f)
        prov, mach = res.get("provenance") or {}, res.get("machine") or {}
        proc = prov.get("processor") or {}
        flags = ", ".join(proc.get("flags") or []) or "none"
        commit = (prov.get("commit") or "unknown")[:7] + ("" if prov.get("clean") else ", tree not clean")
        versions = prov.get("versions") or {}
        parts.append(f"`results/bench/{os.path.basename(path)}`: {proc.get('model', mach.get('cpu', '?'))} (torch CPU "
                     f"capability {proc.get('cpu_capability', '?')}; flags: {flags}), {mach.get('cores', '?')} cores, "
                     f"{prov.get('threads', '?')} threads, torch {versions.get('torch', '?')}, device "
                     f"{mach.get('device', '?')}, commit {commit}\n\n{bench_table(res)}\n")
    return "\n".join(parts) if parts else "(no committed bench file)\n"


def generate_sampling():
    """docs/tools.md's table of the box head's negatives (tools/plot_sampling.py --json)."""
    data = load("sampling_negatives.json")
    if not data:
        return "(no results/sampling_negatives.json)\n"
    edges = data["bin_edges_median"]
    k = len(edges) - 1
    head = " | ".join(f"bin{i} [{edges[i]:.2f}, {edges[i + 1]:.2f})" for i in range(k))
    lines = [f"| negatives | count | mean IoU | IoU = 0 | {head} | outside bins* |", "|" + "---|" * (k + 5)]
    for name in ("all", "uniform", "iou_balanced"):
        r = data["rows"][name]
        shares = " | ".join(f"{v:.3f}" for v in r["shares"])
        lines.append(f"| {name} | {r['count']} | {r['mean_iou']:.3f} | {r['zero_share']:.3f} | {shares} |")
    prov = data["provenance"]
    lines += ["", f"(`results/sampling_negatives.json`: {data['num_images']} training images, weights "
              f"`{'/'.join(data['weights'].split('/')[-3:-1])}` of the headline runs, code at commit "
              f"{prov['commit'][:7]}, {prov['processor']['model']})"]
    return "\n".join(lines) + "\n"



# docs/results_builtin.md: one section per data file. rows: (variant, label); pairs: (variant, its
# baseline); task: which metrics ("bbox", "segm": mask AP from metrics_by_task, "box_proposals": AR).
# Marks: † measured before the RPN loss normaliser fix (648d25b) in a config with the RPN negative cap;
# ‡ the RetinaNet recipe before 7b4df18.
PAGE_SECTIONS = [
    dict(title=f"The headline set: Faster R-CNN, Libra R-CNN, balanced sampling alone ({cls})", file=name,
         rows=HEADLINE_ROWS, pairs=[(v, b) for v, b, _ in HEADLINE_PAIRS] + [("ohem", "sampling")])
    for name, cls in HEADLINE_SETS] + [
    dict(title="A second backbone family: a small RegNet-FPN", file="ablation_regnet_amd.json",
         rows=[("baseline", "Faster R-CNN, RegNet-FPN"), ("libra", "Libra R-CNN, RegNet-FPN")],
         pairs=[("libra", "baseline")]),
    dict(title="The RegNet-FPN recipe check (one seed)", file="ablation_regnet_recipe_amd.json",
         rows=[("baseline", "Faster R-CNN, RegNet-FPN"), ("libra", "Libra R-CNN, RegNet-FPN")], pairs=[]),
    dict(title="Earlier runs: each Libra component alone", file="ablation_builtin.json",
         rows=[("baseline", "Faster R-CNN"), ("libra", "Libra R-CNN †"), ("sampling", "+ balanced sampling only"),
               ("bfp", "+ BFP only"), ("balanced_l1", "+ Balanced L1 only"), ("rpn_cap", "+ RPN negative cap only †"),
               ("retinanet_baseline", "RetinaNet ‡"), ("retinanet_libra", "Libra RetinaNet ‡")],
         pairs=[("libra", "baseline"), ("sampling", "baseline"), ("bfp", "baseline"), ("balanced_l1", "baseline"),
                ("rpn_cap", "baseline"), ("retinanet_libra", "retinanet_baseline")]),
    dict(title="Earlier runs: after the RPN loss normaliser fix", file="ablation_rpn_normaliser.json",
         rows=[("baseline", "Faster R-CNN"), ("libra", "Libra R-CNN"), ("rpn_cap", "+ RPN negative cap only")],
         pairs=[("libra", "baseline"), ("rpn_cap", "baseline")]),
    dict(title="Earlier runs: the first five-seed set (mixed commits and processors)", file="ablation_headline.json",
         rows=[("baseline", "Faster R-CNN"), ("libra", "Libra R-CNN"), ("sampling", "+ balanced sampling only")],
         pairs=[("libra", "baseline"), ("sampling", "baseline")]),
    dict(title="Earlier runs: RoI samplers (random, the Libra pair, OHEM)", file="ablation_sampling.json",
         rows=[("baseline", "random (Faster R-CNN)"), ("sampling", "the Libra pair"), ("ohem", "OHEM")],
         pairs=[("sampling", "baseline"), ("ohem", "baseline"), ("ohem", "sampling")]),
    dict(title="Earlier runs: the built-in RetinaNet recipe (since 7b4df18)", file="ablation_retinanet_cpu.json",
         rows=[("retinanet_baseline", "RetinaNet"), ("retinanet_libra", "Libra RetinaNet")],
         pairs=[("retinanet_libra", "retinanet_baseline")], class_agnostic=True),
    dict(title="Earlier runs: RPN vs Libra RPN (proposal recall)", file="ablation_rpn.json", task="box_proposals",
         rows=[("rpn_baseline", "RPN"), ("libra_rpn", "Libra RPN")], pairs=[("libra_rpn", "rpn_baseline")]),
    dict(title="Earlier runs on a GPU: Cascade, Mask and Fast R-CNN (box AP)", file="ablation_heads_gpu.json",
         rows=[("cascade_baseline", "Cascade R-CNN"), ("cascade_libra", "Libra Cascade R-CNN †"),
               ("mask_baseline", "Mask R-CNN"), ("mask_libra", "Libra Mask R-CNN †"),
               ("fast_baseline", "Fast R-CNN"), ("fast_libra", "Libra Fast R-CNN")],
         pairs=[("cascade_libra", "cascade_baseline"), ("mask_libra", "mask_baseline"), ("fast_libra", "fast_baseline")]),
    dict(title="Earlier runs on a GPU: Mask R-CNN's mask AP", file="ablation_heads_gpu.json", task="segm",
         rows=[("mask_baseline", "Mask R-CNN"), ("mask_libra", "Libra Mask R-CNN †")],
         pairs=[("mask_libra", "mask_baseline")]),
    dict(title="Earlier runs on a GPU: RetinaNet, the recipe before 7b4df18", file="ablation_retinanet_gpu.json",
         rows=[("retinanet_baseline", "RetinaNet ‡"), ("retinanet_libra", "Libra RetinaNet ‡")],
         pairs=[("retinanet_libra", "retinanet_baseline")]),
    dict(title="Earlier runs on CPU: Cascade R-CNN (one seed)", file="ablation_heads.json",
         rows=[("cascade_baseline", "Cascade R-CNN"), ("cascade_libra", "Libra Cascade R-CNN †")], pairs=[]),
]
PAGE_METRICS = {"bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"), "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
                "box_proposals": ("AR@100", "AR@1000", "ARs@100", "ARm@100", "ARl@100")}


def _task_metrics(r, task):
    if task == "segm":
        return (r.get("metrics_by_task") or {}).get("segm")
    return r.get("metrics")


def _task_runs(data, variant, task):
    out = []
    for r in (data or {}).get("runs", []):
        m = _task_metrics(r, task)
        if r.get("name") == variant and m:
            out.append(dict(r, metrics=m))
    return out


def _provenance_line(name, runs):
    commits = ", ".join(sorted({_commit(r) for r in runs}))
    procs = "; ".join(sorted({_processor(r) for r in runs}))
    threads = sorted({str((r.get("provenance") or {}).get("threads") or r.get("threads") or "not recorded")
                      for r in runs})
    return f"Data: `results/{name}`. Commits: {commits}. Processors: {procs}. Threads per run: {', '.join(threads)}."


def _section(spec, equivalent):
    name, task = spec["file"], spec.get("task", "bbox")
    data = load(name)
    metrics = PAGE_METRICS[task]
    key = metrics[0]
    rows = [(v, label, _task_runs(data, v, task)) for v, label in spec["rows"]]
    rows = [(v, label, runs) for v, label, runs in rows if runs]
    if not rows:
        return None
    out = [f"### {spec['title']}", "", _provenance_line(name, [r for _, _, rs in rows for r in rs]), ""]
    extra = spec.get("class_agnostic")
    head = ["config", "seeds"] + list(metrics) + (["class-agnostic AP"] if extra else []) + [f"{key} per seed"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, label, runs in rows:
        cells = [label, ", ".join(str(r["seed"]) for r in runs)]
        cells += [_fmt(summarize_metric([r["metrics"].get(m) for r in runs])) for m in metrics]
        if extra:
            cells.append(_fmt(summarize_metric([(r.get("class_agnostic") or {}).get("AP") for r in runs])))
        cells.append(", ".join(f"{r['metrics'][key]:.2f}" if r["metrics"].get(key) is not None else "n/a"
                               for r in runs))
        out.append("| " + " | ".join(cells) + " |")
    labels = dict(spec["rows"])
    comp = []
    for v, base in spec.get("pairs", []):
        runs_v, runs_b = _task_runs(data, v, task), _task_runs(data, base, task)
        if not runs_v or not runs_b:
            continue
        rep = build_report(runs_v + runs_b, {v: base, base: None}, task=task, equivalent=equivalent)
        d = rep["differences"][v]
        dm = d[key]
        why = sorted(set((d.get("unpaired") or {}).values()))
        label = f"{labels[v]} vs {labels[base]}"
        if dm["n"] == 0:
            comp.append(f"| {label} | 0 | | | | not paired: {'; '.join(why)} |")
            continue
        ci = f"[{dm['ci'][0]:+.2f}, {dm['ci'][1]:+.2f}]" if dm["ci"] else "n/a"
        per = ", ".join(f"{s}: {(_by_seed(runs_v, key)[s] - _by_seed(runs_b, key)[s]):+.2f}" for s in dm["seeds"])
        note = f" ({len(d['unpaired'])} seed(s) not paired: {'; '.join(why)})" if why else ""
        comp.append(f"| {label} | {dm['n']} | {dm['mean']:+.2f} | {ci} | {per} | {dm['verdict']}{note} |")
    if comp:
        out += ["", f"| comparison | pairs | Δ{key} | 95% interval | Δ{key} per paired seed (seed: Δ) | verdict |",
                "|---|---|---|---|---|---|"] + comp
    return "\n".join(out) + "\n"


def _by_seed(runs, key):
    return {r["seed"]: r["metrics"][key] for r in runs}


def generate_results_page():
    """docs/results_builtin.md's tables: every data file's runs with their provenance, and the
    comparisons the pairing rule allows (or why it does not)."""
    equivalent = identity_equivalence(load("seeded_identity.json") or [])
    parts = [s for s in (_section(spec, equivalent) for spec in PAGE_SECTIONS) if s]
    return "\n".join(parts)


def _short_opts(opts):
    """A trial's options as `KEY VALUE` pairs, keys without their first component; an anchor-size
    list is shortened to its smallest size."""
    out = []
    for k, v in zip(opts[::2], opts[1::2]):
        if k.endswith("ANCHOR_GENERATOR.SIZES"):
            v = "from " + v.strip("[]").split(",")[0] + " px"
        out.append(f"`{k.split('.', 1)[-1]} {v}`")
    return " ".join(out) or "(the config as it is)"


def generate_retinanet_trials():
    """docs/retinanet_investigation.md's table: each RetinaNet recipe trial of
    results/retinanet_trials.json with its config, options, where it ran, box AP at every
    evaluation, the final class-aware and class-agnostic AP (AP50), and per class how many found
    objects (IoU >= the confusion's threshold) got the right class."""
    data = load("retinanet_trials.json")
    if not data:
        return "(no results/retinanet_trials.json)\n"
    lines = ["| trial | config, options | commit, detectron2, where, threads, wall | box AP at iteration | "
             "final AP (AP50) | class-agnostic AP (AP50) | right class / found, per class |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for t in data["trials"]:
        aps = ", ".join(f"{it}: {m['AP']:.2f}" for it, m in t["box_AP_at_iteration"].items())
        aware, agn, conf = t.get("final_class_aware"), t.get("final_class_agnostic"), t.get("final_confusion")
        fin = f"{aware['AP']:.2f} ({aware['AP50']:.2f})" if aware else "not evaluated"
        ag = f"{agn['AP']:.2f} ({agn['AP50']:.2f})" if agn else "not evaluated"
        right = "n/a"
        if conf:
            cells = []
            for i, (cls, row) in enumerate(zip(conf["classes"], conf["matrix"])):
                found = sum(row[:len(conf["classes"])])
                cells.append(f"{cls} {row[i]}/{found}")
            right = ", ".join(cells)
        where = t.get("machine") or "see the note above"
        wall = (t.get("wall") or "").replace("rc=0 wall=", "") or "not recorded"
        cfg = os.path.basename(t["config"]).replace(".yaml", "")
        lines.append(f"| {t['name']} | {cfg}: {_short_opts(t.get('opts') or [])} | {t['commit']}, detectron2 "
                     f"{t['detectron2']}, {where}, {t['threads']}, {wall} | {aps} | {fin} | {ag} | {right} |")
        for key in ("note", "stopped", "control"):
            if t.get(key):
                notes.append(f"- {t['name']} ({key}): {t[key]}")
    head = f"Data: `results/retinanet_trials.json` ({data['note']}).\n\n"
    return head + "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def generate_anchor_coverage():
    """docs/tools.md's anchor-coverage table (tools/anchor_coverage.py --json results/anchor_coverage.json)."""
    data = load("anchor_coverage.json")
    if not data:
        return "(no results/anchor_coverage.json)\n"
    lines = ["| anchors (head levels, smallest size) | foreground IoU | small: best IoU / no fg anchor / fg anchors "
             "| medium | large |", "|---|---|---|---|---|"]
    for r in data["records"]:
        levels = f"{r['in_features'][0].upper()}-{r['in_features'][-1].upper()} from {r['sizes'][0][0]:g} px"
        cells = []
        for k in ("small", "medium", "large"):
            c = r["summary"][k]
            cells.append(f"{c['best_iou_median']:.3f} / {100 * c['low_quality_frac']:.1f}% / {c['n_fg_median']:g}")
        lines.append(f"| {levels} | {r['fg_iou']:g} | " + " | ".join(cells) + " |")
    first = data["records"][0]
    n = {k: first["summary"][k]["boxes"] for k in ("small", "medium", "large", "all")}
    prov = first["provenance"]
    lines += ["", f"(`results/anchor_coverage.json`: {first['dataset']}, {n['all']} boxes: {n['small']} small, "
              f"{n['medium']} medium, {n['large']} large; config `{first['config']}` with the options each record "
              f"gives; commit {prov['commit'][:7]}; medians.)"]
    return "\n".join(lines) + "\n"


BLOCKS = [("README.md", "results", generate_verdicts), (os.path.join("docs", "results_builtin.md"), "summary", generate),
          (os.path.join("docs", "performance.md"), "bench", generate_bench),
          (os.path.join("docs", "tools.md"), "sampling", generate_sampling),
          (os.path.join("docs", "tools.md"), "anchors", generate_anchor_coverage),
          (os.path.join("docs", "results_builtin.md"), "runs", generate_results_page),
          (os.path.join("docs", "retinanet_investigation.md"), "trials", generate_retinanet_trials)]


def block_of(text, tag="results", where="README.md"):
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{where} has no {begin} ... {end} block")
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def readme_block(text):
    return block_of(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    status = 0
    for rel, tag, make in BLOCKS:
        block = make()
        path = os.path.join(ROOT, rel)
        with open(path) as f:
            text = f.read()
        if args.check:
            if block_of(text, tag, rel) != block:
                print(f"{rel}'s {tag} block differs from the data; run dev/results_tables.py --write", file=sys.stderr)
                status = 1
        elif args.write:
            if rel == "README.md":
                plot_verdicts()
            begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
            block_of(text, tag, rel)
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1]
            with open(path, "w") as f:
                f.write(f"{head}{begin}\n{block}{end}{tail}")
        else:
            print(f"--- {rel} ({tag})\n{block}", end="")
    return status


if __name__ == "__main__":
    sys.exit(main())
