#!/usr/bin/env python
"""Train every trained path a result rests on briefly, one thread, and hash the final weights.

    python dev/seeded_identity.py -o output/identity                       # one line per run
    python dev/seeded_identity.py -o output/identity --append results/seeded_identity.json --label before

For changes that must not move any result: run it on the commit before and on the commit
after (same machine, same session) and compare the hashes; equal hashes mean bit-identical
weights. ``--append`` adds one record (hashes keyed by run name, with the provenance: commit,
processor, threads, versions) to a json list that is only ever appended to; the ablation
report reads it to pair runs of two commits that it proves equivalent, for the configurations
each hash covers (``covers``: the config file and options of the ablation variants it stands
for). The runs go through train_net.py, seed 42, without evaluation; ``cpu_bf16`` (bfloat16
autocast) runs only where the processor has native bfloat16 and is recorded as skipped
elsewhere.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dev.records.provenance import provenance  # noqa: E402

B = "configs/builtin/"
FASTER, LIBRA = B + "faster_rcnn_R_18_FPN_cpu.yaml", B + "libra_rcnn_R_18_FPN_cpu.yaml"
SAMPLING = ["MODEL.ROI_HEADS.NAME", "LibraROIHeads"]
RPN_CAP = ["MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN", "MODEL.LIBRA.RPN_NEG_POS_UB", "5.0"]
IT = ["SOLVER.MAX_ITER", "40"]
# name -> (config, options of the short run, the ablation variants it covers: [(config, options)])
RUNS = {
    "faster_rcnn": (FASTER, IT, [(FASTER, [])]),
    "libra_rcnn": (LIBRA, IT, [(LIBRA, [])]),
    "sampling": (FASTER, IT + SAMPLING, [(FASTER, SAMPLING)]),
    "rpn_cap": (FASTER, IT + RPN_CAP, [(FASTER, RPN_CAP)]),
    "ohem": (B + "ohem_faster_rcnn_R_18_FPN_cpu.yaml", IT, [(B + "ohem_faster_rcnn_R_18_FPN_cpu.yaml", [])]),
    "retinanet": (B + "retinanet_R_18_FPN_cpu.yaml", IT, [(B + "retinanet_R_18_FPN_cpu.yaml", [])]),
    "libra_retinanet": (B + "libra_retinanet_R_18_FPN_cpu.yaml", IT, [(B + "libra_retinanet_R_18_FPN_cpu.yaml", [])]),
    "libra_cascade": (B + "libra_cascade_rcnn_R_18_FPN_cpu.yaml", IT,
                      [(B + "libra_cascade_rcnn_R_18_FPN_cpu.yaml", [])]),
    "libra_mask": (B + "libra_mask_rcnn_R_18_FPN_cpu.yaml", IT, [(B + "libra_mask_rcnn_R_18_FPN_cpu.yaml", [])]),
    "libra_rpn": (B + "libra_rpn_R_18_FPN_cpu.yaml", IT, [(B + "libra_rpn_R_18_FPN_cpu.yaml", [])]),
    "repeat_factors": (LIBRA, ["SOLVER.MAX_ITER", "20", "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                               "DATALOADER.REPEAT_THRESHOLD", "0.9", "DATALOADER.NUM_WORKERS", "2"], []),
    "lazy_libra_rcnn": ("configs/lazy/libra_rcnn_R_18_FPN_builtin.py", ["train.max_iter=20"],
                        [("configs/lazy/libra_rcnn_R_18_FPN_builtin.py", [])]),
    "cpu_bf16": (LIBRA, IT + ["SOLVER.AMP.ENABLED", "True"], [(LIBRA, ["SOLVER.AMP.ENABLED", "True"])]),
}


def weights_hash(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_command(name, output_dir):
    config, opts, _ = RUNS[name]
    d = os.path.abspath(os.path.join(output_dir, name))
    if config.endswith(".py"):
        extra = [f"train.output_dir={d}", "train.seed=42", "train.eval_period=0",
                 "dataloader.test.dataset.names=libra_shapes_val_mini"]
    else:
        extra = ["OUTPUT_DIR", d, "SEED", "42", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]
    return [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config)] + opts + extra, d


def append_record(path, record):
    """Append ``record`` to the json list at ``path`` (created if missing; never rewritten
    otherwise than by adding at the end)."""
    data = []
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise SystemExit(f"{path}: expected a json list of records")
    data.append(record)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output-dir", required=True)
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run names (default: all)")
    ap.add_argument("--json", help="write this record (hashes + provenance) here")
    ap.add_argument("--append", help="append this record to a json list (e.g. results/seeded_identity.json)")
    ap.add_argument("--label", default="", help="a word for the record, e.g. before / after")
    args = ap.parse_args(argv)
    from libra_d2.engine.cpu_amp import cpu_bf16_native

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    hashes, skipped = {}, {}
    os.makedirs(args.output_dir, exist_ok=True)
    for name in RUNS:
        if args.only and name not in args.only:
            continue
        if name == "cpu_bf16" and not cpu_bf16_native():
            skipped[name] = "no native bfloat16 on this processor"
            print(f"{name}: skipped ({skipped[name]})", flush=True)
            continue
        cmd, d = run_command(name, args.output_dir)
        with open(os.path.join(args.output_dir, f"{name}.log"), "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{name}: train_net.py exited {rc}; see {log.name}")
        hashes[name] = weights_hash(os.path.join(d, "model_final.pth"))
        print(f"{name}: {hashes[name]}", flush=True)
    record = {"label": args.label, "provenance": provenance(threads=1), "hashes": hashes, "skipped": skipped,
              "runs": {n: {"config": RUNS[n][0], "opts": RUNS[n][1], "covers": [list(c) for c in RUNS[n][2]]}
                       for n in hashes}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    if args.append:
        append_record(args.append, record)


if __name__ == "__main__":
    main()
