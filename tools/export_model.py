#!/usr/bin/env python
"""Export a trained Faster / Cascade / Mask R-CNN or RetinaNet (Libra or not) to torch.export, TorchScript or ONNX.

    python tools/export_model.py --config-file configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml \\
        --output output/export --opts MODEL.WEIGHTS output/demo/model_final.pth

Writes ``OUTPUT/model.pt2`` (``--format export``, the default: a ``torch.export``
``ExportedProgram``, height and width dynamic from the coarsest stride + 1 to 2048),
``OUTPUT/model.ts`` (``--format torchscript``, traced; TorchScript is deprecated in current
PyTorch) or ``OUTPUT/model.onnx`` (``--format onnx``: torch's exporter built on torch.export,
from the same program as ``--format export``, dynamic height and width; needs onnxscript;
``--onnx-exporter torchscript`` uses the older TorchScript-based exporter). The module's ``forward(image)`` takes one float tensor [3, H, W] in the
model's ``INPUT.FORMAT`` (BGR for detectron2's configs), pixel values 0..255, any H and W
(already resized: no resizing inside), and returns ``(boxes [N, 4], scores [N],
classes [N])`` with boxes in input pixels (Mask R-CNN: and ``masks [N, H, W]``, bool). Loading needs only ``import torch, torchvision``
(the graph calls torchvision's nms/roi_align)::

    import torch, torchvision
    model = torch.jit.load("output/export/model.ts")          # --format torchscript
    model = torch.export.load("output/export/model.pt2").module()  # --format export
    boxes, scores, classes = model(image)

After writing, the export is checked against the eager model on ``--check-sizes`` input sizes
(default three sizes other than the traced one, with odd pyramid-level sizes): the maximum
box / score differences are printed, and the command fails if the detections differ
(boxes > 1e-3 px, scores > 1e-5, or different classes). ``--format onnx`` checks with
onnxruntime when it is installed. Works with detectron2 0.6 and main (no ``detectron2.export``).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_CHECK_SIZES = ["161x217", "201x275", "233x311"]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", required=True, help="folder for model.ts / model.onnx")
    p.add_argument("--format", choices=["export", "aoti", "torchscript", "onnx"], default="export",
                   help="export: model.pt2 (torch.export ExportedProgram, dynamic height and width); "
                        "aoti: model_aoti.pt2 (that program compiled by AOTInductor; minutes); "
                        "torchscript: model.ts (traced); onnx: model.onnx")
    p.add_argument("--onnx-exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="with --format onnx: dynamo (torch.export-based, default; needs onnxscript) or "
                        "torchscript (the older exporter)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="input size used to trace (default: INPUT.MIN_SIZE_TEST x 4/3 of it)")
    p.add_argument("--check-sizes", nargs="*", default=DEFAULT_CHECK_SIZES, metavar="HxW",
                   help="sizes to compare exported and eager outputs on (none: skip the check)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return p


def parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bad size {text!r}: expected HxW, e.g. 192x256") from None
    if h < 1 or w < 1:
        raise SystemExit(f"bad size {text!r}: height and width must be positive")
    return h, w


def build(cfg_file, opts):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg(cfg_file, opts)
    if not cfg.MODEL.WEIGHTS:
        print("[export] warning: MODEL.WEIGHTS is empty: exporting randomly initialised weights", file=sys.stderr)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


def main(argv=None):
    args = get_parser().parse_args(argv)
    import torch

    from libra_d2.export.exporters import ExportableDetector, compare_detections, default_example_size, example_image, export_onnx, trace_detector

    cfg, model = build(args.config_file, args.opts)
    size = parse_size(args.size) if args.size else default_example_size(cfg)
    example = example_image(cfg, size)
    os.makedirs(args.output, exist_ok=True)
    eager = ExportableDetector(model)

    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        traced = trace_detector(model, example)
        traced.save(path)
        loaded = torch.jit.load(path, map_location=cfg.MODEL.DEVICE)
        run = loaded
    elif args.format in ("export", "aoti"):
        from libra_d2.export import compile_aoti, export_program, size_bounds

        path = os.path.join(args.output, "model.pt2" if args.format == "export" else "model_aoti.pt2")
        lo, hi = size_bounds(model, cfg)
        try:
            program = export_program(model, example, (lo, hi))
        except Exception as e:  # the exporter's own message names the failing expression
            msg = str(e).split("\n")[0]
            sys.exit(f"[export] torch.export failed for {cfg.MODEL.META_ARCHITECTURE}: {type(e).__name__}: {msg}")
        if args.format == "export":
            torch.export.save(program, path)
            run = torch.export.load(path).module()
        else:
            compile_aoti(program, path)
            run = torch._inductor.aoti_load_package(path)
        print(f"[export] height and width: {lo} to {hi}")
    else:
        path = os.path.join(args.output, "model.onnx")
        try:
            export_onnx(model, example, path, exporter=args.onnx_exporter)
        except Exception as e:  # the exporter's own message names the op
            msg = str(e).split("\n")[0]
            sys.exit(f"[export] ONNX export ({args.onnx_exporter} exporter) failed for "
                     f"{cfg.MODEL.META_ARCHITECTURE}: {type(e).__name__}: {msg}")
        try:
            import onnxruntime as ort
        except ImportError:
            print(f"[export] wrote {path}; onnxruntime is not installed, so outputs were not checked")
            return 0
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(x):
            outs = session.run(None, {"image": x.cpu().numpy()})
            return tuple(torch.as_tensor(o) for o in outs)

    print(f"[export] wrote {path} (traced at {size[0]}x{size[1]})")
    report = {"format": args.format, "path": path, "traced_size": list(size), "checks": {}}
    ok = True
    for i, text in enumerate(args.check_sizes):
        h, w = parse_size(text)
        x = example_image(cfg, (h, w), seed=i + 1)
        with torch.no_grad():
            c = compare_detections(eager(x), run(x))
        report["checks"][text] = c
        ok &= c["all_matched"]
        print(f"[export] {text}: " + json.dumps(c))
    with open(os.path.join(args.output, f"export_report_{args.format}.json"), "w") as f:
        json.dump(report, f, indent=1)
    if not ok:
        sys.exit("[export] exported outputs differ from the eager model's (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
