#!/usr/bin/env python
"""Complete the provenance of run records made before the tools wrote it (docs/*.json).

    python tools/backfill_provenance.py            # print what would change
    python tools/backfill_provenance.py --write

For each run of a data file (``{"runs": [...]}``) that records no commit, or a placeholder
instead of one, the commit becomes ``"unknown"`` and ``commit_at_or_before`` names the
oldest commit whose version of the file already holds that run (found with git log: the run
trained at that commit or earlier). A run without a recorded processor (or with ``"unknown"``) gets
one only where its own ``machine`` field or the commit that added its data names it (``NAMED`` below), with no capability or flags (so
it never pairs: the pairing rule needs the processor as the kernels see it); else
``"unknown"``. Records that have both are left as they are. Idempotent.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# processors named by the commit messages that added these files (git log)
NAMED = {"ablation_heads_gpu.json": "NVIDIA H200 (GPU)", "ablation_retinanet_gpu.json": "NVIDIA H200 (GPU)",
         "ablation_cpu_bf16.json": "Intel Xeon (amx_bf16, avx512_bf16)"}


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _has_commit(run):
    c = (run.get("provenance") or {}).get("commit") or run.get("commit")
    return bool(c) and c != "unknown" and not str(c).startswith("earlier")


def first_commit_holding(rel, name, seed):
    """The oldest commit (abbreviated hash) whose version of ``rel`` has a run ``name``/``seed``."""
    for commit in reversed(_git("log", "--format=%h", "--", rel).split()):
        try:
            data = json.loads(_git("show", f"{commit}:{rel}"))
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        if any(r.get("name") == name and r.get("seed") == seed for r in data.get("runs", [])):
            return commit
    return None


def _named_processor(rel, run):
    """(model, where it was read): the run's own ``machine`` field (its text before the first
    comma), else the commit message that added the file (NAMED), else unknown."""
    if run.get("machine"):
        return str(run["machine"]).split(",")[0].strip(), "the run's machine field"
    model = NAMED.get(os.path.basename(rel))
    if model:
        return model, "the commit message that added this record"
    return "unknown", "not recorded anywhere"


def backfill(rel, data):
    changes = []
    for run in data.get("runs", []):
        if not _has_commit(run) and "commit_at_or_before" not in run:
            before = first_commit_holding(rel, run.get("name"), run.get("seed"))
            old = run.get("commit")
            run["commit"] = "unknown"
            run["commit_at_or_before"] = before
            changes.append(f"{run.get('name')} seed {run.get('seed')}: commit {old!r} -> 'unknown', at or before {before}")
        prov = run.setdefault("provenance", {})
        unnamed = (prov.get("processor") or {}).get("model") == "unknown"
        if (not prov.get("processor") or unnamed) and not run.get("processor"):
            model, source = _named_processor(rel, run)
            if prov.get("processor") is None or model != "unknown":
                prov["processor"] = {"model": model, "cpu_capability": None, "flags": None, "source": source}
                changes.append(f"{run.get('name')} seed {run.get('seed')}: processor -> {model!r}")
    return changes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if not name.endswith(".json"):
            continue
        rel = os.path.join("docs", name)
        with open(os.path.join(ROOT, rel)) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "runs" not in data:
            continue
        changes = backfill(rel, data)
        for c in changes:
            print(f"{rel}: {c}")
        if changes and args.write:
            with open(os.path.join(ROOT, rel), "w") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
