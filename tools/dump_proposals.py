#!/usr/bin/env python
"""Write detectron2 proposal files from a trained RPN / Faster R-CNN, for Fast R-CNN.

    python tools/dump_proposals.py --config-file configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml \\
        --dataset libra_shapes_train libra_shapes_val --output-dir output/proposals \\
        --opts MODEL.WEIGHTS output/demo/model_final.pth

For each dataset, ``OUTPUT_DIR/<dataset>_proposals.pkl`` in detectron2's format (what
``DATASETS.PROPOSAL_FILES_*`` with ``MODEL.LOAD_PROPOSALS`` reads through
``load_proposals_into_dataset``): a pickled dict with ``ids`` (image ids), ``boxes`` (one
float32 [N, 4] array per image, XYXY in original-image pixels), ``objectness_logits`` (one
float32 [N] array per image) and ``bbox_mode`` (``BoxMode.XYXY_ABS``). Every image of the
dataset gets an entry (detectron2 needs one per image), also images without annotations.
Images are resized as at test time (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``); the RPN
keeps ``MODEL.RPN.POST_NMS_TOPK_TEST`` proposals per image, mapped back to the original size.
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE", help="a config with an RPN (RPN or Faster R-CNN)")
    p.add_argument("--dataset", nargs="+", required=True, help="registered dataset names")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return p


def dump(cfg, model, dataset_name):
    """Proposals of every image of ``dataset_name`` as detectron2's proposal-file dict."""
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.structures import BoxMode
    from tqdm import tqdm

    mapper = DatasetMapper(cfg, is_train=False)
    out = {"ids": [], "boxes": [], "objectness_logits": [], "bbox_mode": BoxMode.XYXY_ABS}
    for d in tqdm(DatasetCatalog.get(dataset_name), desc=dataset_name, unit="img"):
        inp = mapper(d)
        with torch.no_grad():
            images = model.preprocess_image([inp])
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)
        p = proposals[0]
        h, w = p.image_size
        boxes = p.proposal_boxes.tensor.cpu().clone()
        boxes[:, 0::2] *= d["width"] / w
        boxes[:, 1::2] *= d["height"] / h
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, d["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, d["height"])
        out["ids"].append(d["image_id"])
        out["boxes"].append(boxes.numpy().astype(np.float32))
        out["objectness_logits"].append(p.objectness_logits.cpu().numpy().astype(np.float32))
    return out


def main(argv=None):
    args = get_parser().parse_args(argv)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg(args.config_file, args.opts)
    if cfg.MODEL.LOAD_PROPOSALS or cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals":
        sys.exit("dump_proposals.py: the config has no RPN (it loads precomputed proposals); give an RPN/Faster R-CNN config")
    if not cfg.MODEL.WEIGHTS:
        print("[dump] warning: MODEL.WEIGHTS is empty: proposals of a randomly initialised RPN", file=sys.stderr)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    os.makedirs(args.output_dir, exist_ok=True)
    written = {}
    for name in args.dataset:
        data = dump(cfg, model, name)
        path = os.path.join(args.output_dir, f"{name}_proposals.pkl")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(data, f)
        os.replace(tmp, path)
        n = sum(len(b) for b in data["boxes"])
        print(f"[dump] {name}: {len(data['ids'])} images, {n} proposals -> {path}")
        written[name] = (path, data)
    return written


if __name__ == "__main__":
    main()
