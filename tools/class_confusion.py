#!/usr/bin/env python
"""Class-aware vs class-agnostic box AP of a finished evaluation, and its confusion matrix.

    python tools/class_confusion.py --results output/run/inference/coco_instances_results.json \\
        --gt datasets/libra_shapes/annotations/instances_val.json

``--results``: the ``coco_instances_results.json`` that detectron2's COCOEvaluator writes
(dataset category ids). Prints the class-aware AP (as COCOEvaluator reports it), the AP with
every class merged into one (class-agnostic NMS at 0.5, 100 detections per image: how well
objects are found and boxed, whatever their class), and for each ground-truth class where
its best-scoring overlapping detection (IoU >= ``--iou``) went. A large gap between the two
APs with an off-diagonal matrix says the detector localises but confuses classes.
``--json FILE`` also writes the figures.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="coco_instances_results.json of an evaluation")
    p.add_argument("--gt", required=True, help="the dataset's COCO annotation file")
    p.add_argument("--iou", type=float, default=0.5, help="overlap for the confusion matrix")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    for path in (args.results, args.gt):
        if not os.path.isfile(path):
            sys.exit(f"[class_confusion] no such file: {path}")
    from libra_d2.analysis.class_confusion import diagnose

    with open(args.gt) as f:
        gt = json.load(f)
    with open(args.results) as f:
        dets = json.load(f)
    if not isinstance(dets, list):
        sys.exit(f"[class_confusion] {args.results}: expected a list of COCO detections")
    known = {c["id"] for c in gt["categories"]}
    unknown = sorted({d["category_id"] for d in dets} - known)
    if unknown:
        sys.exit(f"[class_confusion] {args.results}: category ids {unknown} are not in {args.gt} "
                 f"(ids {sorted(known)}); were the results written for another dataset?")
    out = diagnose(gt, dets, iou=args.iou)
    a, g = out["class_aware"], out["class_agnostic"]
    print(f"class-aware    AP {a['AP']:.2f}  AP50 {a['AP50']:.2f}  AR@100 {a['AR@100']:.2f}")
    print(f"class-agnostic AP {g['AP']:.2f}  AP50 {g['AP50']:.2f}  AR@100 {g['AR@100']:.2f}")
    c = out["confusion"]
    width = max(len(n) for n in c["columns"]) + 1
    print(f"\nground truth -> class of its best detection at IoU >= {c['iou']}")
    print(" " * width + "".join(f"{n:>{width}}" for n in c["columns"]))
    for name, row in zip(c["classes"], c["matrix"]):
        print(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
