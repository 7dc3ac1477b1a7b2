#!/usr/bin/env python
"""Convert a torchvision ResNet/ResNeXt ImageNet checkpoint into a detectron2 backbone file.

    python tools/convert_torchvision_backbone.py --arch resnext101_64x4d --output pretrained/X-101-64x4d-torchvision.pkl
    python tools/convert_torchvision_backbone.py --input resnet50.pth --output pretrained/R-50-torchvision.pkl

With ``--arch`` the weights come from torchvision's model builder (downloaded by torchvision
to its cache); with ``--input`` from a local ``.pth`` state dict. The output is a pickle in
detectron2's model-zoo format (``{"model": {...}, "__author__": "torchvision",
"matching_heuristics": True}``) with detectron2 key names, loaded by
``DetectionCheckpointer`` through ``MODEL.WEIGHTS``. Such backbones expect
``MODEL.RESNETS.STRIDE_IN_1X1: False``, ``INPUT.FORMAT: RGB`` and torchvision's pixel
mean/std (see configs/COCO-Detection/libra_faster_rcnn_X_101_64x4d_FPN_1x.yaml).
"""
import argparse
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libra_d2.utils.convert import resnet_key_to_d2  # noqa: E402


def convert_state_dict(state_dict):
    """Returns (d2 state dict of numpy arrays, list of dropped source keys)."""
    out, dropped = {}, []
    for k, v in state_dict.items():
        new = resnet_key_to_d2(k)
        if new is None:
            dropped.append(k)
            continue
        out[new] = v.detach().cpu().numpy()
    return out, dropped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="torchvision model name, e.g. resnet50, resnext101_64x4d")
    src.add_argument("--input", help="a local .pth state dict of a torchvision ResNet")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    if args.arch:
        import torchvision

        sd = torchvision.models.get_model(args.arch, weights="DEFAULT").state_dict()
    else:
        sd = torch.load(args.input, map_location="cpu")
        sd = sd.get("state_dict", sd)
    model, dropped = convert_state_dict(sd)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f)
    print(f"wrote {len(model)} tensors to {args.output}; dropped {len(dropped)} keys without a counterpart: "
          + ", ".join(sorted({d.split('.')[0] if d.startswith('fc') else d.rsplit('.', 1)[-1] for d in dropped})))


if __name__ == "__main__":
    main()
