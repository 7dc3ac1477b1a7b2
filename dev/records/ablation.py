"""Seeded ablations: run plans, paired statistics and reports (used by ``dev/ablate.py``).

A *plan* is a list of named variants (a config file plus extra ``KEY VALUE`` options), one
of them the baseline, times a list of seeds. Every (variant, seed) pair is one training run
of ``train_net.py`` in its own output folder; the runs of two variants with the same seed
form a *pair*, and a component's effect is estimated from the per-seed differences
(variant - baseline) with a Student-t 95% confidence interval. The statistics here are pure
functions of metric dicts so they can be checked on synthetic numbers.
"""
import json
import math
import os
import statistics

__all__ = [
    "METRICS", "AR_METRICS", "METRICS_BY_TASK", "primary_task", "Variant", "PRESETS", "preset_plan", "t_quantile", "summarize_metric",
    "VARIANT_PRESETS", "PRESET_NAMES", "paired_difference", "verdict", "build_report", "report_markdown", "run_status",
    "pairing", "identity_equivalence",
]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOEvaluator's proposal recall ("box_proposals": ProposalNetwork models)
AR_METRICS = ("AR@100", "AR@1000", "ARs@100", "ARm@100", "ARl@100", "ARs@1000", "ARm@1000", "ARl@1000")
METRICS_BY_TASK = {"bbox": METRICS, "segm": METRICS, "keypoints": METRICS, "box_proposals": AR_METRICS}


def primary_task(tasks):
    """The task an ablation reports first: box AP when evaluated, else proposal recall."""
    for t in ("bbox", "box_proposals"):
        if t in tasks:
            return t
    return sorted(tasks)[0] if tasks else "bbox"


class Variant:
    """One named configuration of an ablation: ``config_file`` plus ``opts`` (flat KEY VALUE
    list); ``baseline`` names the variant it is compared with (None: it is a baseline)."""

    def __init__(self, name, config_file, opts=(), baseline=None):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"variant name {name!r} is not usable as a folder name")
        self.name, self.config_file, self.opts, self.baseline = name, config_file, list(opts), baseline
        if len(self.opts) % 2:
            raise ValueError(f"variant {name}: options must be KEY VALUE pairs, got {self.opts}")

    def to_dict(self):
        return {"name": self.name, "config_file": self.config_file, "opts": self.opts, "baseline": self.baseline}


# Component switches on a plain baseline; each turns on one Libra part alone.
_RCNN_SWITCHES = {
    "sampling": ["MODEL.ROI_HEADS.NAME", "LibraROIHeads"],
    "bfp": ["MODEL.BACKBONE.NAME", "build_resnet_bfp_backbone"],
    # the box loss lives in LibraROIHeads' predictor; uniform samplers keep detectron2's sampling
    "balanced_l1": ["MODEL.ROI_HEADS.NAME", "LibraROIHeads", "MODEL.LIBRA.POS_SAMPLER", "random",
                    "MODEL.LIBRA.NEG_SAMPLER", "random", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1"],
    "rpn_cap": ["MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN", "MODEL.LIBRA.RPN_NEG_POS_UB", "5.0"],
}
_RETINA_SWITCHES = {
    "bfp": ["MODEL.META_ARCHITECTURE", "LibraRetinaNet", "MODEL.BACKBONE.NAME", "build_retinanet_resnet_bfp_backbone",
            "MODEL.BFP.REFINE_LEVEL", "1"],
    "balanced_l1": ["MODEL.META_ARCHITECTURE", "LibraRetinaNet", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "balanced_l1"],
}
PRESETS = {
    # name -> [(prefix, baseline config, full Libra config, component switches on the baseline)]
    "builtin-rcnn": [("", "configs/builtin/faster_rcnn_R_18_FPN_cpu.yaml",
                      "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml", _RCNN_SWITCHES)],
    "builtin-retinanet": [("retinanet_", "configs/builtin/retinanet_R_18_FPN_cpu.yaml",
                           "configs/builtin/libra_retinanet_R_18_FPN_cpu.yaml", {})],
    "coco-rcnn": [("", "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
                   "configs/COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml", _RCNN_SWITCHES)],
    "coco-retinanet": [("retinanet_", "configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml",
                        "configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml", _RETINA_SWITCHES)],
}
PRESETS["builtin"] = PRESETS["builtin-rcnn"] + PRESETS["builtin-retinanet"]
# Other heads on the built-in data: each Libra model against its plain twin. The Fast
# R-CNN pair reads the proposal files its configs name (tools/dump_proposals.py writes them).
PRESETS["builtin-cascade"] = [("cascade_", "configs/builtin/cascade_rcnn_R_18_FPN_cpu.yaml",
                               "configs/builtin/libra_cascade_rcnn_R_18_FPN_cpu.yaml", {})]
PRESETS["builtin-mask"] = [("mask_", "configs/builtin/mask_rcnn_R_18_FPN_cpu.yaml",
                            "configs/builtin/libra_mask_rcnn_R_18_FPN_cpu.yaml", {})]
PRESETS["builtin-fast"] = [("fast_", "configs/builtin/fast_rcnn_R_18_FPN_cpu.yaml",
                            "configs/builtin/libra_fast_rcnn_R_18_FPN_cpu.yaml", {})]
PRESETS["builtin-heads"] = PRESETS["builtin-cascade"] + PRESETS["builtin-mask"] + PRESETS["builtin-fast"]


# Presets of explicit variants, each compared with the first (the sampler registry and Libra
# RPN): name -> [(variant, config, options)]
VARIANT_PRESETS = {
    "builtin-sampling": [
        ("baseline", "configs/builtin/faster_rcnn_R_18_FPN_cpu.yaml", []),
        ("sampling", "configs/builtin/faster_rcnn_R_18_FPN_cpu.yaml", _RCNN_SWITCHES["sampling"]),
        ("ohem", "configs/builtin/ohem_faster_rcnn_R_18_FPN_cpu.yaml", []),
    ],
    "builtin-rpn": [
        ("rpn_baseline", "configs/builtin/rpn_R_18_FPN_cpu.yaml", []),
        ("libra_rpn", "configs/builtin/libra_rpn_R_18_FPN_cpu.yaml", []),
    ],
    "coco-sampling": [
        ("baseline", "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", []),
        ("sampling", "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", _RCNN_SWITCHES["sampling"]),
        ("ohem", "configs/COCO-Detection/ohem_faster_rcnn_R_50_FPN_1x.yaml", []),
    ],
    "coco-rpn": [
        ("rpn_baseline", "configs/COCO-Detection/rpn_R_50_FPN_1x.yaml", []),
        ("libra_rpn", "configs/COCO-Detection/libra_rpn_R_50_FPN_1x.yaml", []),
    ],
}
PRESET_NAMES = tuple(sorted(set(PRESETS) | set(VARIANT_PRESETS)))


def preset_plan(name, components=True):
    """Variants of a preset: per group ``<prefix>baseline``, ``<prefix>libra`` (compared with
    that baseline) and, if ``components``, one ``<prefix><switch>`` per component switch."""
    if name in VARIANT_PRESETS:
        first = VARIANT_PRESETS[name][0][0]
        return [Variant(v, cfg, opts, baseline=None if v == first else first) for v, cfg, opts in VARIANT_PRESETS[name]]
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    out = []
    for prefix, base, libra, switches in PRESETS[name]:
        b = f"{prefix}baseline"
        out += [Variant(b, base), Variant(f"{prefix}libra", libra, baseline=b)]
        if components:
            out += [Variant(f"{prefix}{k}", base, v, baseline=b) for k, v in switches.items()]
    return out


# --------------------------------------------------------------------------- statistics
def t_quantile(p, df):
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    try:
        from scipy.stats import t
    except ImportError as e:
        raise ImportError("the ablation report's confidence intervals need scipy: pip install 'libra-d2[ablation]' "
                          "(make setup installs it)") from e
    return float(t.ppf(p, df))


def summarize_metric(values):
    """``{"n", "mean", "std"}`` of a list of numbers (sample std; None where undefined).
    NaN values (e.g. APs of a dataset without small objects) are left out."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    return {"n": n, "mean": statistics.fmean(vals) if n else None, "std": statistics.stdev(vals) if n > 1 else None}


def paired_difference(variant, baseline, confidence=0.95):
    """Per-seed differences ``variant[s] - baseline[s]`` over the seeds both have (dicts
    seed -> value). Returns n, mean, std, the two-sided Student-t CI (None below 2 pairs)
    and the seeds used."""
    seeds = sorted(s for s in variant if s in baseline and _finite(variant[s]) and _finite(baseline[s]))
    diffs = [float(variant[s]) - float(baseline[s]) for s in seeds]
    n = len(diffs)
    out = {"n": n, "seeds": seeds, "mean": statistics.fmean(diffs) if n else None, "std": None, "ci": None}
    if n >= 2:
        sd = statistics.stdev(diffs)
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
        out.update(std=sd, ci=[out["mean"] - half, out["mean"] + half])
    return out


def _finite(v):
    return v is not None and not math.isnan(float(v))


def verdict(diff):
    """Plain-words reading of :func:`paired_difference`'s result."""
    n = diff["n"]
    if n < 2:
        return f"not enough runs ({n} paired seed{'s' if n != 1 else ''}; need >= 2)"
    lo, hi = diff["ci"]
    if lo > 0:
        return "helps"
    if hi < 0:
        return "hurts"
    return f"no detectable difference at {n} seeds"


# --------------------------------------------------------------------------- runs & report
def run_status(output_dir):
    """"done" (eval_results.json written), "partial" (a checkpoint exists) or "new"."""
    if os.path.isfile(os.path.join(output_dir, "eval_results.json")):
        return "done"
    if os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        return "partial"
    return "new"


def load_metrics_by_task(output_dir):
    """``{task: metrics}`` for every task a finished run evaluated (``bbox``, ``segm``, ...)."""
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        res = json.load(f)
    return {t: {k: v[k] for k in METRICS_BY_TASK.get(t, METRICS) if k in v}
            for t, v in sorted(res.items()) if isinstance(v, dict)}


# --------------------------------------------------------------------------- pairing rule
def _processor_class(run):
    from .provenance import processor_class

    return processor_class((run.get("provenance") or {}).get("processor"))


def _prov(run):
    return run.get("provenance") or {}


def _commit(run):
    c = _prov(run).get("commit") or run.get("commit")
    return None if not c or c == "unknown" else str(c).split("+")[0]


def _clean(run):
    """Clean only when the record says so: ``clean`` True and no ``+dirty`` commit anywhere."""
    prov = _prov(run)
    dirty = any(str(c).endswith("+dirty") for c in (prov.get("commit"), run.get("commit")) if c)
    return prov.get("clean") is True and not dirty


def _device(run):
    """``("cpu", None)`` or ``("cuda", gpu model or None)``: from the provenance's device,
    else from a ``MODEL.DEVICE`` option (records made before the device was recorded)."""
    dev = _prov(run).get("device")
    if isinstance(dev, dict) and dev.get("type"):
        return dev["type"], dev.get("gpu")
    opts = [str(o) for o in run.get("opts") or []]
    for key, value in zip(opts, opts[1:]):
        if key == "MODEL.DEVICE":
            return ("cuda" if value.startswith("cuda") else "cpu"), None
    return "cpu", None


VERSION_KEYS = ("torch", "torchvision", "detectron2")


def _versions(run):
    v = _prov(run).get("versions") or {}
    return tuple(v.get(k) for k in VERSION_KEYS)


def _machine_key(run):
    """``(key, None)`` naming everything two runs must share besides the commit (device,
    processor class or GPU model, threads, versions), or ``(None, reason)``."""
    dev, gpu = _device(run)
    if dev == "cuda":
        if not gpu:
            return None, "GPU model not recorded"
        where = ("cuda", gpu)
    else:
        pc = _processor_class(run)
        if pc is None:
            return None, "processor not recorded"
        where = ("cpu", pc)
    threads = _prov(run).get("threads")
    if threads is None:
        return None, "threads not recorded"
    versions = _versions(run)
    if None in versions:
        return None, "versions not recorded"
    return (where, threads, versions), None


def _mixed(run):
    """A reason when the run cannot stand for one machine and commit, else None."""
    prov = _prov(run)
    if prov.get("mixed") or run.get("mixed"):
        return "resumed on another machine or commit (mixed)"
    if prov.get("resumed") and not prov.get("segments"):
        return "resumed, and where its first part ran is not recorded"
    return None


def _describe(key):
    (kind, what), threads, versions = key
    where = f"{what[0]} {what[1]} [{' '.join(what[2])}]" if kind == "cpu" else f"GPU {what}"
    return where, threads, versions


def identity_equivalence(records):
    """From seeded-identity records (``results/seeded_identity.json``: each with ``provenance``,
    ``hashes`` by run name, ``runs[name]["covers"]``: the ``[config, opts]`` of the
    configurations a hash stands for, and ``structure``: what the shortened schedule passed),
    a function ``(commit_a, commit_b, machine_key, config, opts) -> bool``: True when both
    commits have a clean record on that machine key (device and processor class, threads,
    versions) whose schedule covered the recipe's whole structure (warm-up, every LR step, a
    checkpoint with exact resume, the final evaluation) and whose hash for a run covering
    that configuration is the same."""
    table = {}  # (commit, machine key, config, opts) -> set of hashes
    for rec in records or []:
        prov = rec.get("provenance") or {}
        commit = str(prov.get("commit") or "").split("+")[0]
        if not commit or commit == "unknown" or prov.get("clean") is not True:
            continue
        if not set(FULL_STRUCTURE) <= set(rec.get("structure") or ()):
            continue  # a hash of a few iterations proves nothing about LR steps, resume or evaluation
        key, _ = _machine_key({"provenance": prov})
        if key is None:
            continue
        for name, h in (rec.get("hashes") or {}).items():
            for config, opts in (rec.get("runs", {}).get(name, {}).get("covers") or []):
                table.setdefault((commit, key, config, tuple(opts)), set()).add(h)

    def equivalent(a, b, key, config, opts):
        ha = table.get((a, key, config, tuple(opts)))
        hb = table.get((b, key, config, tuple(opts)))
        return bool(ha and hb and ha & hb)

    return equivalent


# what a seeded-identity schedule must pass for its hashes to prove two commits equivalent
FULL_STRUCTURE = ("warmup", "lr_steps", "checkpoint_resume", "evaluation")


def pairing(run, base, equivalent=None):
    """Whether two runs of one seed may be paired. Both must ran on one device (processor
    class, or GPU model), with the same threads and torch / torchvision / detectron2
    versions, neither mixed, both from clean trees, and from one commit or two commits that
    ``equivalent`` (:func:`identity_equivalence`) proves equivalent for both runs'
    configurations on that device, threads and versions. Returns ``(True, None)`` or
    ``(False, reason)``."""
    ka, why = _machine_key(run)
    if ka is None:
        return False, why
    kb, why = _machine_key(base)
    if kb is None:
        return False, why
    (wa, ta, va), (wb, tb, vb) = _describe(ka), _describe(kb)
    if ka[0][0] != kb[0][0]:
        return False, f"different devices ({ka[0][0]} vs {kb[0][0]})"
    if ka[0] != kb[0]:
        return False, f"different processors ({wa} vs {wb})"
    if ta != tb:
        return False, f"different thread counts ({ta} vs {tb})"
    if va != vb:
        k = next(k for k, x, y in zip(VERSION_KEYS, va, vb) if x != y)
        return False, f"different {k} versions ({dict(zip(VERSION_KEYS, va))[k]} vs {dict(zip(VERSION_KEYS, vb))[k]})"
    for r in (run, base):
        why = _mixed(r)
        if why:
            return False, why
    ca, cb = _commit(run), _commit(base)
    if ca is None or cb is None:
        return False, "commit not recorded"
    if not (_clean(run) and _clean(base)):
        return False, "a run's tree is not recorded clean"
    if ca == cb:
        return True, None
    if equivalent is not None and all(equivalent(ca, cb, ka, r["config_file"], r.get("opts", [])) for r in (run, base)):
        return True, None
    return False, f"commits {ca[:7]} and {cb[:7]} not proven equivalent for these configurations"


def build_report(runs, baseline, confidence=0.95, task="bbox", equivalent=None, require_provenance=True):
    """``runs``: list of dicts with at least name, seed, metrics (dict or None).
    ``baseline``: the name every other variant is compared with, or a dict variant name ->
    its baseline's name (None for baselines themselves).

    Returns ``{"configs": {name: {metric: summary}}, "differences": {name: {metric: diff +
    verdict, "baseline": name, "unpaired": {seed: reason}}}, "baseline": baseline, "task": task,
    "metrics": [...]}``; differences are paired by seed, and only where :func:`pairing` allows
    (``require_provenance=False``: every seed pairs, for runs made outside the tools); the
    metrics are ``METRICS_BY_TASK[task]``."""
    metrics = METRICS_BY_TASK.get(task, METRICS)
    by_name, records = {}, {}
    seen = set()
    for r in runs:
        if (r.get("name"), r.get("seed")) in seen:
            raise ValueError(f"two records of {r.get('name')!r} at seed {r.get('seed')} in one set: "
                             "remove one (a set holds one run per variant and seed)")
        seen.add((r.get("name"), r.get("seed")))
        if r.get("metrics"):
            by_name.setdefault(r["name"], {})[r["seed"]] = r["metrics"]
            records[(r["name"], r["seed"])] = r
    configs, diffs = {}, {}
    for name, per_seed in by_name.items():
        configs[name] = {m: summarize_metric([v.get(m) for v in per_seed.values()]) for m in metrics}
        configs[name]["seeds"] = sorted(per_seed)
    for name, per_seed in by_name.items():
        ref = baseline.get(name) if isinstance(baseline, dict) else (None if name == baseline else baseline)
        if ref is None:
            continue
        base = dict(by_name.get(ref, {}))
        unpaired = {}
        if require_provenance:
            for seed in sorted(set(per_seed) & set(base)):
                ok, why = pairing(records[(name, seed)], records[(ref, seed)], equivalent)
                if not ok:
                    unpaired[seed] = why
                    base.pop(seed)
        diffs[name] = {"baseline": ref, "unpaired": unpaired}
        for m in metrics:
            d = paired_difference({s: v.get(m) for s, v in per_seed.items()}, {s: v.get(m) for s, v in base.items()},
                                  confidence)
            d["verdict"] = verdict(d)
            diffs[name][m] = d
    return {"baseline": baseline, "confidence": confidence, "configs": configs, "differences": diffs, "task": task,
            "metrics": list(metrics)}


def _fmt(s):
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")


def report_markdown(report, title="Ablation", task=None):
    task = task or report.get("task", "bbox")
    metrics = report.get("metrics") or list(METRICS_BY_TASK.get(task, METRICS))
    m0, m1, m2 = metrics[0], metrics[1], metrics[2]
    what = {"bbox": "COCO box AP", "segm": "COCO mask AP",
            "box_proposals": "COCO proposal recall"}.get(task, f"COCO {task} AP")
    lines = [f"# {title}", "", f"Per configuration: mean ± sample standard deviation over seeds ({what}).", ""]
    lines.append("| config | seeds | " + " | ".join(metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for name, summ in report["configs"].items():
        lines.append(f"| {name} | {len(summ['seeds'])} | " + " | ".join(_fmt(summ[m]) for m in metrics) + " |")
    conf = int(round(report["confidence"] * 100))
    lines += ["", f"Paired by seed against its baseline: mean difference in {m0} with its {conf}% "
              "confidence interval (Student t over seed pairs), and the verdict.", ""]
    lines.append(f"| config | vs | pairs | Δ{m0} | CI | Δ{m1} | Δ{m2} | verdict ({m0}) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, d in report["differences"].items():
        ap = d[m0]
        ci = f"[{ap['ci'][0]:+.2f}, {ap['ci'][1]:+.2f}]" if ap["ci"] else "n/a"

        def mean(m):
            return "n/a" if d[m]["mean"] is None else f"{d[m]['mean']:+.2f}"

        lines.append(f"| {name} | {d['baseline']} | {ap['n']} | {mean(m0)} | {ci} | {mean(m1)} | {mean(m2)} | {ap['verdict']} |")
    notes = [f"- {name} vs {d['baseline']}, seed {seed}: not paired ({why})"
             for name, d in report["differences"].items() for seed, why in (d.get("unpaired") or {}).items()]
    if notes:
        lines += ["", "Seeds left unpaired (pairs form only within one processor class and one commit, or commits "
                  "proven equivalent by seeded-identity hashes):", ""] + notes
    return "\n".join(lines) + "\n"
