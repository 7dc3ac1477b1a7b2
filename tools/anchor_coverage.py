#!/usr/bin/env python
"""How well a config's anchors cover a dataset's boxes at the matcher's foreground threshold.

    python tools/anchor_coverage.py --config-file configs/builtin/retinanet_R_18_FPN_cpu.yaml \\
        [--dataset libra_shapes_train] [--opts KEY VALUE ...] [--json FILE]

Uses the config's anchor generator and head features (``MODEL.RETINANET`` for RetinaNet
meta-architectures, ``MODEL.RPN`` otherwise) and its foreground IoU threshold (the last of
``IOU_THRESHOLDS``), on boxes resized as at test time (``INPUT.MIN_SIZE_TEST``). Prints, per
COCO size range (original area), the median best anchor IoU, the share of boxes that no anchor
reaches at the threshold (they are positives only through the low-quality rule, through one
anchor) and the median number of foreground anchors. The dataset defaults to the config's
first training set. ``--json FILE`` adds the summary, with its provenance, to FILE's
``records`` (replacing an earlier record of the same dataset, config and options).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--dataset", help="registered dataset name (default: the config's first DATASETS.TRAIN)")
    p.add_argument("--json", help="also write the summary here")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = p.parse_args(argv)
    if not os.path.isfile(args.config_file):
        sys.exit(f"[anchor_coverage] no such config file: {args.config_file}")
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_anchor_generator, build_backbone

    from libra_d2.analysis.anchor_coverage import anchor_coverage, summarize_coverage
    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    dense = "RetinaNet" in cfg.MODEL.META_ARCHITECTURE
    head = cfg.MODEL.RETINANET if dense else cfg.MODEL.RPN
    name = args.dataset or cfg.DATASETS.TRAIN[0]
    if name not in DatasetCatalog.list():
        sys.exit(f"[anchor_coverage] dataset {name!r} is not registered")
    shapes = build_backbone(cfg).output_shape()
    missing = [f for f in head.IN_FEATURES if f not in shapes]
    if missing:
        sys.exit(f"[anchor_coverage] head features {missing} are not backbone outputs {sorted(shapes)}")
    in_shapes = [shapes[f] for f in head.IN_FEATURES]
    gen = build_anchor_generator(cfg, in_shapes)
    fg = float(head.IOU_THRESHOLDS[-1])
    records = anchor_coverage(gen, [s.stride for s in in_shapes], DatasetCatalog.get(name), fg,
                              cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    summary = summarize_coverage(records)
    print(f"{name}: {head.IN_FEATURES} anchors {cfg.MODEL.ANCHOR_GENERATOR.SIZES}, foreground IoU >= {fg}, "
          f"test short side {cfg.INPUT.MIN_SIZE_TEST}")
    print(f"{'size':<8}{'boxes':>7}{'best IoU (median)':>19}{'no fg anchor':>14}{'fg anchors (median)':>21}")
    for k, s in summary.items():
        if s["boxes"]:
            print(f"{k:<8}{s['boxes']:>7}{s['best_iou_median']:>19.3f}{100 * s['low_quality_frac']:>13.1f}%"
                  f"{s['n_fg_median']:>21.1f}")
    if args.json:
        from dev.records.provenance import provenance

        record = {"dataset": name, "config": args.config_file, "opts": args.opts, "fg_iou": fg,
                  "in_features": list(head.IN_FEATURES), "sizes": [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES],
                  "summary": summary, "provenance": provenance()}
        records = []
        if os.path.isfile(args.json):
            with open(args.json) as f:
                records = json.load(f).get("records", [])
        # one record per (dataset, config, options): a re-run replaces its own
        records = [r for r in records if (r["dataset"], r["config"], r["opts"]) != (name, args.config_file, args.opts)]
        with open(args.json, "w") as f:
            json.dump({"records": records + [record]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
