#!/usr/bin/env python
"""Run a trained libra-d2 (or any detectron2) model on images and save the visualised predictions.

    python tools/predict.py --config-file configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml \\
        --input 'datasets/libra_shapes/val/00000*.jpg' --output output/demo_vis \\
        --opts MODEL.WEIGHTS output/demo/model_final.pth

Same interface as detectron2's demo (``--config-file``, ``--input`` files or globs,
``--output`` folder, ``--confidence-threshold``, ``--opts KEY VALUE ...``). Runs on CPU or GPU
(``--opts MODEL.DEVICE cuda``). Writes ``<output>/<image name>.png``.
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files or glob patterns")
    p.add_argument("--output", required=True, help="folder for the visualised predictions")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    from libra_d2.config import get_libra_cfg
    from libra_d2.utils.visualize import build_predictor, visualize_files

    cfg = get_libra_cfg(args.config_file, args.opts)
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    paths = []
    for pattern in args.input:
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            sys.exit(f"predict.py: --input {pattern!r} matches no file")
        paths.extend(found)
    written = visualize_files(cfg, build_predictor(cfg), paths, args.output, threshold=args.confidence_threshold)
    print(f"wrote {len(written)} images to {args.output}")
    return written


if __name__ == "__main__":
    main()
