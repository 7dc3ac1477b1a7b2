#!/usr/bin/env python
"""Print (or check) the README's results tables from the committed data files.

    python tools/results_tables.py            # print the generated blocks
    python tools/results_tables.py --write    # replace the blocks in README.md and docs/performance.md
    python tools/results_tables.py --check    # exit 1 if a block differs

README.md's block sits between ``<!-- results:begin -->`` and ``<!-- results:end -->``;
docs/performance.md's (``<!-- bench:begin -->`` ... ``<!-- bench:end -->``) holds one table per
committed bench file, ``docs/bench/*.json`` (``make bench``'s output, one file per machine).
Per configuration: seeds, mean ± sample std of box AP (proposal recall for proposal-only
models), the commits and processors the runs record; then each paired comparison the data
allow, with the pairing rule of the ablation report (one processor class, one commit or
commits proven equivalent by docs/seeded_identity.json): pairs, mean difference, 95%
Student-t interval, verdict, or why no pair formed.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from libra_d2.analysis.ablation import build_report, identity_equivalence, summarize_metric  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# (label, data file under docs/, variant name in it)
ROWS = [
    ("Faster R-CNN", "ablation_headline_amd.json", "baseline"),
    ("Libra R-CNN", "ablation_headline_amd.json", "libra"),
    ("+ balanced sampling only", "ablation_headline_amd.json", "sampling"),
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
PAIRS = [
    ("Libra R-CNN vs Faster R-CNN", "ablation_headline_amd.json", "libra", "baseline"),
    ("balanced sampling vs Faster R-CNN", "ablation_headline_amd.json", "sampling", "baseline"),
    ("Libra R-CNN vs Faster R-CNN, small RegNet-FPN", "ablation_regnet_amd.json", "libra", "baseline"),
    ("Libra R-CNN vs Faster R-CNN (earlier runs)", "ablation_headline.json", "libra", "baseline"),
    ("balanced sampling vs Faster R-CNN (earlier runs)", "ablation_headline.json", "sampling", "baseline"),
    ("Libra RetinaNet vs RetinaNet (earlier runs)", "ablation_retinanet_cpu.json", "retinanet_libra",
     "retinanet_baseline"),
]


def load(name):
    path = os.path.join(ROOT, "docs", name)
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
        lines.append(f"| {label} | {seeds} | {_fmt(ap)} | {commits} | {procs} | `docs/{name}` |")
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
    folder = os.path.join(ROOT, "docs", "bench")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json")) \
        if os.path.isdir(folder) else []


def generate_bench():
    """One table per committed bench file, headed by where and from what it was measured."""
    from benchmarks.run_all import bench_table

    parts = []
    for path in bench_files():
        with open(path) as f:
            res = json.load(f)
        prov, mach = res.get("provenance") or {}, res.get("machine") or {}
        proc = prov.get("processor") or {}
        flags = ", ".join(proc.get("flags") or []) or "none"
        commit = (prov.get("commit") or "unknown")[:7] + ("" if prov.get("clean") else ", tree not clean")
        versions = prov.get("versions") or {}
        parts.append(f"`docs/bench/{os.path.basename(path)}`: {proc.get('model', mach.get('cpu', '?'))} (torch CPU "
                     f"capability {proc.get('cpu_capability', '?')}; flags: {flags}), {mach.get('cores', '?')} cores, "
                     f"{prov.get('threads', '?')} threads, torch {versions.get('torch', '?')}, device "
                     f"{mach.get('device', '?')}, commit {commit}\n\n{bench_table(res)}\n")
    return "\n".join(parts) if parts else "(no committed bench file)\n"


def generate_sampling():
    """docs/tools.md's table of the box head's negatives (tools/plot_sampling.py --json)."""
    data = load("sampling_negatives.json")
    if not data:
        return "(no docs/sampling_negatives.json)\n"
    edges = data["bin_edges_median"]
    k = len(edges) - 1
    head = " | ".join(f"bin{i} [{edges[i]:.2f}, {edges[i + 1]:.2f})" for i in range(k))
    lines = [f"| negatives | count | mean IoU | IoU = 0 | {head} | outside bins* |", "|" + "---|" * (k + 5)]
    for name in ("all", "uniform", "iou_balanced"):
        r = data["rows"][name]
        shares = " | ".join(f"{v:.3f}" for v in r["shares"])
        lines.append(f"| {name} | {r['count']} | {r['mean_iou']:.3f} | {r['zero_share']:.3f} | {shares} |")
    prov = data["provenance"]
    lines += ["", f"(`docs/sampling_negatives.json`: {data['num_images']} training images, weights "
              f"`{'/'.join(data['weights'].split('/')[-3:-1])}` of the headline runs, code at commit "
              f"{prov['commit'][:7]}, {prov['processor']['model']})"]
    return "\n".join(lines) + "\n"


BLOCKS = [("README.md", "results", generate), (os.path.join("docs", "performance.md"), "bench", generate_bench),
          (os.path.join("docs", "tools.md"), "sampling", generate_sampling)]


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
                print(f"{rel}'s {tag} block differs from the data; run tools/results_tables.py --write", file=sys.stderr)
                status = 1
        elif args.write:
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
