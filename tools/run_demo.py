#!/usr/bin/env python
"""`make demo`: train and evaluate a config on the built-in dataset, then render predictions.

Steps: generate libra_shapes if needed; run ``train_net.py`` (detectron2's progress/ETA
logging streams through); print the COCO AP table; keep ``OUT/config.yaml``,
``OUT/model_final.pth``, ``OUT/eval_results.json``; draw predictions on a few val images
into ``OUT/vis/*.png``.

By default an existing run in OUT is resumed (a finished one is only re-evaluated); pass
``--fresh`` to delete OUT and train from scratch.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-file", default=os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    ap.add_argument("--output-dir", default=os.path.join(ROOT, "output/demo"))
    ap.add_argument("--num-vis", type=int, default=4, help="val images to render")
    ap.add_argument("--fresh", action="store_true", help="delete the output folder and train from scratch")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="extra config KEY VALUE pairs")
    args = ap.parse_args()
    start = time.time()

    from libra_d2.data import ensure_generated

    data_dir = ensure_generated()
    if args.fresh and os.path.isdir(args.output_dir):
        shutil.rmtree(args.output_dir)
    from libra_d2.config import get_libra_cfg
    from libra_d2.engine.cpu_amp import native_bf16_opts

    cfg = get_libra_cfg(args.config_file)
    # a processor with native bfloat16 trains the demo under CPU bfloat16 autocast (same AP
    # within the seed spread, about a third less time: docs/performance.md); the options after the
    # config's own, so SOLVER.AMP.ENABLED False in DEMO_OPTS keeps float32
    amp = native_bf16_opts(args.opts, cfg.MODEL.DEVICE)
    if amp:
        print("[demo] this processor has native bfloat16: training under bfloat16 autocast "
              "(SOLVER.AMP.ENABLED False trains in float32)", flush=True)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", args.config_file, "--resume",
           "OUTPUT_DIR", args.output_dir] + amp + args.opts
    print("[demo] " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        sys.exit(f"[demo] training/evaluation failed with exit code {rc}; logs in {args.output_dir}/log.txt")

    with open(os.path.join(args.output_dir, "eval_results.json")) as f:
        results = json.load(f)
    bbox = results["bbox"]

    from libra_d2.utils.visualize import build_predictor, visualize_files

    cfg = get_libra_cfg(os.path.join(args.output_dir, "config.yaml"))
    cfg.MODEL.WEIGHTS = os.path.join(args.output_dir, "model_final.pth")
    val_dir = os.path.join(data_dir, "val")
    images = sorted(os.listdir(val_dir))[: args.num_vis]
    written = visualize_files(cfg, build_predictor(cfg), [os.path.join(val_dir, p) for p in images],
                              os.path.join(args.output_dir, "vis"), threshold=0.5)

    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    print("\n[demo] COCO bbox AP on libra_shapes_val (%s):" % os.path.relpath(args.config_file, ROOT))
    print("| " + " | ".join(f"{k:>6}" for k in keys) + " |")
    print("|" + "|".join(["-" * 8] * len(keys)) + "|")
    print("| " + " | ".join(f"{bbox[k]:6.2f}" for k in keys) + " |")
    print(f"[demo] results:     {os.path.join(args.output_dir, 'eval_results.json')}")
    print(f"[demo] config:      {os.path.join(args.output_dir, 'config.yaml')}")
    print(f"[demo] weights:     {os.path.join(args.output_dir, 'model_final.pth')}")
    print("[demo] predictions: " + ", ".join(written))
    print(f"[demo] done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
