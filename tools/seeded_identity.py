#!/usr/bin/env python
"""Train a few built-in configs briefly with one thread and print a hash of the final weights.

    python tools/seeded_identity.py -o output/identity            # prints one line per run
    python tools/seeded_identity.py -o output/identity --json output/identity/hashes.json

For refactors that must not move any result: run it on the commit before and on the commit
after (same machine, same session) and compare the hashes; equal hashes mean bit-identical
weights. The runs go through train_net.py (yacs: Faster R-CNN, Libra R-CNN, Libra
RetinaNet at 100 iterations, the repeat-factor sampler at 20; LazyConfig: the built-in
Libra R-CNN at 20), seed 42, without evaluation.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = [
    ("faster_rcnn", "configs/builtin/faster_rcnn_R_18_FPN_cpu.yaml", ["SOLVER.MAX_ITER", "100"]),
    ("libra_rcnn", "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml", ["SOLVER.MAX_ITER", "100"]),
    ("libra_retinanet", "configs/builtin/libra_retinanet_R_18_FPN_cpu.yaml", ["SOLVER.MAX_ITER", "100"]),
    ("repeat_factors", "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml",
     ["SOLVER.MAX_ITER", "20", "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
      "DATALOADER.REPEAT_THRESHOLD", "0.9", "DATALOADER.NUM_WORKERS", "2"]),
    ("lazy_libra_rcnn", "configs/lazy/libra_rcnn_R_18_FPN_builtin.py", ["train.max_iter=20"]),
]


def weights_hash(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output-dir", required=True)
    ap.add_argument("--only", nargs="*", help="run names (default: all)")
    ap.add_argument("--json", help="write {name: hash} here")
    args = ap.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = {}
    for name, config, opts in RUNS:
        if args.only and name not in args.only:
            continue
        d = os.path.abspath(os.path.join(args.output_dir, name))
        lazy = config.endswith(".py")
        extra = [f"train.output_dir={d}", "train.seed=42", "train.eval_period=0",
                 "dataloader.test.dataset.names=libra_shapes_val_mini"] if lazy \
            else ["OUTPUT_DIR", d, "SEED", "42", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]
        cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config)] + opts + extra
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, f"{name}.log"), "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{name}: train_net.py exited {rc}; see {log.name}")
        out[name] = weights_hash(os.path.join(d, "model_final.pth"))
        print(f"{name}: {out[name]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
