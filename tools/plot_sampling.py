#!/usr/bin/env python
"""Plot the IoU distribution of the box head's negatives: all, uniformly sampled, IoU-balanced.

    python tools/plot_sampling.py --config-file configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml \\
        --num-images 64 --output output/sampling.png --opts MODEL.WEIGHTS output/demo/model_final.pth

For the first ``--num-images`` images of the config's first training set, the model's RPN
produces training-time proposals (ground truth appended when PROPOSAL_APPEND_GT), detectron2's
matcher labels them, and for each image the same number of negatives (detectron2's
subsample_labels count) is drawn (b) uniformly and (c) by libra-d2's IoU-balanced sampler
with the config's MODEL.LIBRA settings. One PNG shows the three max-IoU histograms with the
bin edges marked; a table gives each set's share per IoU bin (bins are per image, as the
sampler uses them: K equal bins over [max(FLOOR_THRESH, 0), upper)). Without trained
weights the proposals come from a random RPN and the picture is less telling.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--output", default="output/sampling.png", help="PNG to write")
    p.add_argument("--json", help="also write the table as data (with the weights, settings and provenance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return p


def _bin_index(iou, lo, hi, k):
    width = max(hi - lo, 1e-12) / k
    b = np.floor((iou - lo) / width).astype(np.int64)
    b[(iou < lo) | (iou >= hi) | (b >= k)] = k  # k = outside every bin
    return b


@torch.no_grad()
def collect(cfg, num_images, seed=0):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
    from detectron2.structures import pairwise_iou
    from detectron2.utils.events import EventStorage

    from libra_d2.modeling.sampling import random_subset_mask, sample_iou_balanced_negatives

    torch.manual_seed(seed)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    heads, rpn = model.roi_heads, model.proposal_generator
    lib = cfg.MODEL.LIBRA
    k, lo = int(lib.NUM_BINS), max(float(lib.FLOOR_THRESH), 0.0)
    bg = float(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0])
    batch, frac = heads.batch_size_per_image, heads.positive_fraction
    mapper = DatasetMapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:num_images]
    sets = {"all": [], "uniform": [], "iou_balanced": []}
    bins = {name: [] for name in sets}
    his = []
    for d in dicts:
        inputs = [mapper(d)]
        gt = [x["instances"].to(model.device) for x in inputs]
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        rpn.train()  # training-time proposal counts
        with EventStorage():
            proposals, _ = rpn(images, features, gt)
        rpn.eval()
        if heads.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(gt, proposals)
        props, tgt = proposals[0], gt[0]
        iou = pairwise_iou(tgt.gt_boxes, props.proposal_boxes)
        _, labels = heads.proposal_matcher(iou)
        max_iou = iou.max(0).values if len(tgt) else torch.zeros(len(props), device=iou.device)
        neg, pos = labels == 0, labels == 1
        num_neg = batch - min(int(pos.sum()), int(batch * frac))
        upper = None if lib.NEG_BIN_UPPER == "max_iou" else bg
        hi = float(max_iou.max()) if upper is None else upper
        his.append(hi)
        picks = {
            "all": torch.nonzero(neg).squeeze(1),
            "uniform": torch.nonzero(random_subset_mask(neg, num_neg)).squeeze(1),
            "iou_balanced": sample_iou_balanced_negatives(
                max_iou, neg, num_neg, num_bins=k, floor_thresh=float(lib.FLOOR_THRESH),
                floor_fraction=float(lib.FLOOR_FRACTION), upper=upper,
            ),
        }
        for name, idx in picks.items():
            v = max_iou[idx].cpu().numpy()
            sets[name].append(v)
            bins[name].append(_bin_index(v, lo, hi, k))
    sets = {n: np.concatenate(v) if v else np.zeros(0) for n, v in sets.items()}
    bins = {n: np.concatenate(v) if v else np.zeros(0, np.int64) for n, v in bins.items()}
    return sets, bins, float(np.median(his)) if his else 1.0, lo, k, bg


def table(sets, bins, k):
    rows = {}
    for name in sets:
        counts = np.bincount(bins[name], minlength=k + 1)[: k + 1]
        n = int(counts.sum())
        rows[name] = {
            "count": n,
            "mean_iou": float(sets[name].mean()) if n else float("nan"),
            "zero_share": float((sets[name] == 0).mean()) if n else float("nan"),
            "shares": [float(c) / n if n else 0.0 for c in counts],
        }
    return rows


def main(argv=None):
    args = get_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dev.records.provenance import provenance
    from libra_d2.config import get_libra_cfg

    prov = provenance()  # before anything is written (the PNG may sit inside the repository)
    cfg = get_libra_cfg(args.config_file, args.opts)
    cfg.freeze()
    sets, bins, hi, lo, k, bg = collect(cfg, args.num_images, args.seed)
    rows = table(sets, bins, k)

    edges = [lo + i * (hi - lo) / k for i in range(k + 1)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharex=True)
    titles = {"all": "(a) all negatives", "uniform": "(b) uniform sampling", "iou_balanced": "(c) IoU-balanced sampling"}
    hist_bins = np.linspace(0, max(bg, 0.5), 26)
    for ax, name in zip(axes, ("all", "uniform", "iou_balanced")):
        v = sets[name]
        ax.hist(v, bins=hist_bins, color="#4878a8" if name != "iou_balanced" else "#c0504d", weights=np.full(len(v), 1.0 / max(len(v), 1)))
        for e in edges:
            ax.axvline(e, color="k", linestyle="--", linewidth=0.8)
        ax.set_title(f"{titles[name]} (n={len(v)}, mean IoU {rows[name]['mean_iou']:.3f})")
        ax.set_xlabel("max IoU with ground truth")
    axes[0].set_ylabel("share of negatives")
    fig.suptitle(f"Box-head negatives over {args.num_images} images; dashed: the {k} IoU bins (median upper edge {hi:.2f})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=90)

    head = " | ".join(f"bin{i} [{edges[i]:.2f},{edges[i + 1]:.2f})" for i in range(k))
    print(f"| negatives     | count | mean IoU | IoU = 0 | {head} | outside bins* |")
    print("|" + "---|" * (k + 5))
    for name in ("all", "uniform", "iou_balanced"):
        r = rows[name]
        shares = " | ".join(f"{s:.3f}" for s in r["shares"])
        print(f"| {name:<13} | {r['count']:5d} | {r['mean_iou']:.3f}    | {r['zero_share']:.3f}   | {shares} |")
    print("* IoU >= the image's upper edge, or an image without objects (no bins: every proposal has IoU 0)")
    print(f"plot written to {args.output}")
    if args.json:
        import json

        data = {"config_file": args.config_file, "opts": list(args.opts), "weights": cfg.MODEL.WEIGHTS,
                "num_images": args.num_images, "seed": args.seed, "bin_edges_median": edges, "rows": rows,
                "provenance": prov}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"data written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
