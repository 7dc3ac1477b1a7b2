"""Export of trained detectors to TorchScript (tracing) and ONNX.

:class:`ExportableDetector` wraps a detectron2 Faster R-CNN (``GeneralizedRCNN``, Libra or
not) or RetinaNet (``RetinaNet``/``LibraRetinaNet``) in eval mode behind one tensor-only
signature::

    forward(image: Tensor[3, H, W] float, in the model's INPUT.FORMAT, pixel values 0..255)
        -> (boxes [N, 4] float (x0, y0, x1, y1) in input pixels, scores [N], classes [N] int64)

The image is the network input itself: no resizing happens inside (resize before calling,
as detectron2's ``DefaultPredictor`` does with ``ResizeShortestEdge``), normalisation and
padding to the backbone's size divisibility do. The outputs are those of
``model([{"image": image, "height": H, "width": W}])`` (boxes clipped to the image, empty ones
dropped, as detectron2's post-processing does).

It needs nothing from ``detectron2.export`` (which cannot be imported on detectron2 0.6
without caffe2), so the same code traces with 0.6 and main. Every size the graph depends on
(padding, anchor grids, BFP's gather/scatter sizes, RoI levels, clipping) is computed from
the input's shape at run time: the trace generalises to other input sizes, which
``tests/export/test_export.py`` checks against the eager model on sizes whose pyramid levels are
not multiples of each other.
"""
import contextlib
import copy
import os
import warnings
from typing import List, Tuple

import torch
from torch import nn

__all__ = ["example_image", "BackboneExportError", "ExportableDetector", "trace_detector", "export_program", "compile_aoti",
           "data_dependent_convolutions", "size_bounds", "export_onnx", "ONNX_EXPORTERS", "default_example_size",
           "compare_detections"]


MASK_THRESHOLD = 0.5  # detectron2's detector_postprocess default


def _is_retinanet(model) -> bool:
    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    return isinstance(model, RetinaNet)


class ExportableDetector(nn.Module):
    """Tensor-in, tensors-out view of a detectron2 detector for tracing (see module doc)."""

    def __init__(self, model: nn.Module, branch_free: bool = False):
        super().__init__()
        from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN

        if not isinstance(model, GeneralizedRCNN) and not _is_retinanet(model):
            raise TypeError(
                f"cannot export {type(model).__name__}: supported are GeneralizedRCNN (Faster R-CNN, "
                "Libra R-CNN) and RetinaNet (incl. LibraRetinaNet)"
            )
        if getattr(getattr(model, "roi_heads", None), "keypoint_on", False):
            raise TypeError("cannot export a model with a keypoint head: the exported signature has boxes "
                            "(and masks) only")
        self.model = model
        # Mask R-CNN: a fourth output, masks [N, H, W] (bool) in input pixels
        self.with_masks = bool(getattr(getattr(model, "roi_heads", None), "mask_on", False))
        # torch.export: libra_d2.export.inference's path (no Python branch on tensor values)
        self.branch_free = bool(branch_free)
        self.eval()  # also what exporters restore afterwards

    def _branch_free(self, image):
        from . import inference as ei

        model = self.model
        x, size = ei.preprocess(model, image)
        features = model.backbone(x)
        if _is_retinanet(model):
            return ei.retinanet_detections(model, features, size)
        proposals = ei.rpn_proposals(model.proposal_generator, features, size)
        from detectron2.modeling.roi_heads import CascadeROIHeads

        if isinstance(model.roi_heads, CascadeROIHeads):
            dets = ei.cascade_detections(model.roi_heads, features, proposals, size)
        else:
            dets = ei.box_detections(model.roi_heads, features, proposals, size)
        if self.with_masks:
            dets = dets + (ei.mask_probabilities(model.roi_heads, features, dets[0], dets[2]),)
        return dets

    def _instances(self, image):
        model = self.model
        inputs = [{"image": image}]
        if not _is_retinanet(model):
            return model.inference(inputs, do_postprocess=False)[0]
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        if hasattr(model, "forward_inference"):  # detectron2 main (DenseDetector)
            features = [features[f] for f in model.head_in_features]
            return model.forward_inference(images, features, model.head(features))[0]
        # detectron2 0.6
        from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K

        features = [features[f] for f in model.head_in_features]
        anchors = model.anchor_generator(features)
        logits, deltas = model.head(features)
        logits = [permute_to_N_HWA_K(x, model.num_classes) for x in logits]
        deltas = [permute_to_N_HWA_K(x, 4) for x in deltas]
        return model.inference(anchors, logits, deltas, images.image_sizes)[0]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        from .inference import clip_boxes, nonempty_boxes, paste_masks

        # what detectron2's post-processing does at scale 1: clip to the image, drop empty
        # boxes, paste the masks into the image at their boxes
        if self.branch_free:
            dets = self._branch_free(image)
            boxes = clip_boxes(dets[0], image.shape[-2:])
            keep = nonempty_boxes(boxes)
            out = (boxes[keep], dets[1][keep], dets[2][keep])
            probs = dets[3] if self.with_masks else None
        else:
            inst = self._instances(image)
            boxes = inst.pred_boxes
            boxes.clip(inst.image_size)
            keep = boxes.nonempty()
            out = (boxes.tensor[keep], inst.scores[keep], inst.pred_classes[keep])
            probs = inst.pred_masks[:, 0] if self.with_masks else None
        if probs is not None:
            out = out + (paste_masks(probs[keep], out[0], image.shape[-2:], MASK_THRESHOLD),)
        return out


def default_example_size(cfg) -> Tuple[int, int]:
    """(H, W) used to trace: the test short side and a 4:3 long side within the max size."""
    h = int(cfg.INPUT.MIN_SIZE_TEST)
    w = min(int(round(h * 4 / 3)), int(cfg.INPUT.MAX_SIZE_TEST) or 10**9)
    return h, w


def example_image(cfg, size, seed=0):
    """A seeded random image ``(3, H, W)`` in [0, 255) on ``cfg.MODEL.DEVICE``: the tracing and
    parity input of the exporters."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, size[0], size[1], generator=g) * 255.0).to(cfg.MODEL.DEVICE)


@contextlib.contextmanager
def _cascade_gradient_scaling_as_identity():
    """While tracing: detectron2's cascade scales each stage's gradient with a Python
    ``autograd.Function`` whose forward returns its input unchanged; TorchScript cannot save
    a Python function call, so its ``apply`` is the identity inside the block (inference
    has no gradient to scale) and detectron2's own afterwards."""
    from detectron2.modeling.roi_heads import cascade_rcnn

    fn = getattr(cascade_rcnn, "_ScaleGradient", None)
    if fn is None or "apply" in vars(fn):
        yield
        return
    fn.apply = staticmethod(lambda x, scale: x)
    try:
        yield
    finally:
        del fn.apply


def trace_detector(model, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of :class:`ExportableDetector` (``model`` is switched to eval)."""
    wrapper = ExportableDetector(model)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python bool/int taken from a tensor; the ones in the
        # inference path are data-independent (checked by parity tests on other sizes).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with _cascade_gradient_scaling_as_identity():
            return torch.jit.trace(wrapper, (example,), check_trace=False)


def size_bounds(model, cfg=None) -> Tuple[int, int]:
    """(min, max) input height/width of a ``torch.export`` artefact. Min: one pixel more than
    the coarsest pyramid stride, so every level is at least 2 x 2 after padding (a level of
    size 1 would specialise the graph). Max: 2048, or the config's ``INPUT.MAX_SIZE_TEST``
    when larger (COCO's 800-1333 are inside)."""
    stride = max(s.stride for s in model.backbone.output_shape().values())
    hi = 2048 if cfg is None else max(2048, int(cfg.INPUT.MAX_SIZE_TEST))
    return stride + 1, hi


@contextlib.contextmanager
def _nms_fake_kernel():
    """While exporting: a fake (shape) kernel for ``torchvision::nms`` written with
    ``new_dynamic_size``. torchvision's own (0.29) calls ``create_unbacked_symint``, which
    torch deprecates and warns about on every call; the graph is the same either way (an
    index tensor of data-dependent length), and nothing is registered after the block."""
    lib = torch.library.Library("torchvision", "FRAGMENT")

    def fake_nms(dets, scores, iou_threshold):
        torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: f"nms: boxes must be [N, 4], got {tuple(dets.shape)}")
        torch._check(scores.dim() == 1 and scores.size(0) == dets.size(0), lambda: "nms: one score per box")
        n = torch.library.get_ctx().new_dynamic_size()
        return dets.new_empty(n, dtype=torch.long)

    try:
        torch.library.register_fake("torchvision::nms", fake_nms, lib=lib)
        yield
    finally:
        lib._destroy()


class BackboneExportError(RuntimeError):
    """torch.export cannot export the detector's backbone with dynamic sizes, with or without
    the BFP wrapper (so the wrapper is not the cause)."""


def _export(model, example, dims):
    import torchvision  # noqa: F401  (registers torchvision's ops and their own fake kernels first)

    with torch.no_grad(), _nms_fake_kernel():
        return torch.export.export(ExportableDetector(model, branch_free=True), (example,), dynamic_shapes=(dims,))


def export_program(model, example: torch.Tensor, bounds: Tuple[int, int] = None):
    """``torch.export.export`` of :class:`ExportableDetector` on libra-d2's branch-free
    inference path (:mod:`libra_d2.export.inference`), with dynamic height and width within
    ``bounds`` (default :func:`size_bounds`). Returns the ``ExportedProgram``; save it with
    ``torch.export.save``. When a model whose backbone is a ``BFPBackbone`` fails, its plain
    twin (the inner backbone alone) is tried: if that fails too, :class:`BackboneExportError`
    says the backbone is the cause; otherwise torch's error is raised."""
    ExportableDetector(model, branch_free=True)  # the supported-model checks, before any tracing
    lo, hi = bounds or size_bounds(model)
    h, w = example.shape[-2:]
    if not (lo <= h <= hi and lo <= w <= hi):
        raise ValueError(f"example size {h}x{w} is outside the exported size range [{lo}, {hi}]")
    dims = {1: torch.export.Dim("height", min=lo, max=hi), 2: torch.export.Dim("width", min=lo, max=hi)}
    try:
        return _export(model, example, dims)
    except Exception as e:  # torch.export's errors share no public base class
        from ..modeling.backbone import BFPBackbone

        if not isinstance(getattr(model, "backbone", None), BFPBackbone):
            raise
        plain = copy.copy(model)
        plain._modules = dict(model._modules, backbone=model.backbone.inner)
        try:
            _export(plain, example, dims)
        except Exception:  # the plain twin fails as well: the backbone is the cause
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackboneExportError(
                f"torch.export cannot export this detector with dynamic height and width: its backbone "
                f"{type(model.backbone.inner).__name__} fails without the BFP wrapper as well, so the wrapper is not "
                f"the cause ({type(e).__name__}: {first})") from e
        raise


def data_dependent_convolutions(program) -> List[str]:
    """Names of the convolution nodes of an ``ExportedProgram`` whose batch size is
    data-dependent (an unbacked symbol: e.g. a mask head run over the detections NMS kept)."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    names = []
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in _CONVOLUTIONS:
            val = node.args[0].meta.get("val")
            if val is not None and free_unbacked_symbols(val.shape[0]):
                names.append(node.name)
    return names


_CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.conv_transpose2d.input,
                 torch.ops.aten.convolution.default)


def compile_aoti(program, path: str) -> str:
    """AOTInductor: compile an ``ExportedProgram`` (:func:`export_program`) into a package
    at ``path`` (``.pt2``) for the program's device; load it with
    ``torch._inductor.aoti_load_package(path)`` (torch and torchvision only). Slow: minutes
    on a small CPU.

    A program with a convolution over a data-dependent batch (Mask R-CNN's mask head runs
    over the detections) is compiled without Inductor's layout optimisation: with it, torch
    2.14.1 on CPU lays such a convolution's output out channels-last while the code that
    reads it assumes contiguous strides, so a following GroupNorm reads the wrong elements
    (wrong masks; the boxes are right). docs/export.md has the minimal case."""
    import torchvision  # noqa: F401

    configs = {"layout_optimization": False} if data_dependent_convolutions(program) else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _nms_fake_kernel():  # inductor traces the fake kernels again
        return torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=configs)


ONNX_EXPORTERS = ("dynamo", "torchscript")


def export_onnx(model, example: torch.Tensor, path: str, opset: int = None, dynamic: bool = True,
                exporter: str = "dynamo", program=None) -> str:
    """Write ``model`` as ONNX to ``path`` (returned); inputs ``image`` [3, H, W], outputs
    boxes, scores, classes (and masks for a mask head).

    ``exporter="dynamo"`` (default): torch's exporter built on torch.export, fed the
    :func:`export_program` of libra-d2's branch-free inference (dynamic H and W within
    :func:`size_bounds`); torchvision's NMS
    and RoIAlign become ONNX ``NonMaxSuppression`` / ``RoiAlign`` through onnxscript, which it
    needs. ``exporter="torchscript"``: the older TorchScript-based exporter (``dynamo=False``)
    on the eager module, whose deprecation warnings it silences; ``dynamic``: H and W are
    dynamic axes. ``program``: an :func:`export_program` of ``model`` made already (dynamo
    only; saves exporting twice). Raises whatever the exporter raises (the caller reports it)."""
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: expected one of {ONNX_EXPORTERS}")
    wrapper = ExportableDetector(model)
    names = ["boxes", "scores", "classes"] + (["masks"] if wrapper.with_masks else [])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise ImportError("ONNX export with exporter='dynamo' needs onnxscript (pip install onnxscript, or the "
                              "project's 'export' extra); exporter='torchscript' works without it") from e
        if not dynamic:
            raise ValueError("dynamic=False is an option of exporter='torchscript'; the dynamo exporter's graph "
                             "always takes every size within size_bounds(model)")
        if program is None:
            program = export_program(model, example)
        kwargs = {} if opset is None else {"opset_version": opset}
        with torch.no_grad(), _nms_fake_kernel():
            onnx_program = torch.onnx.export(program, (example,), dynamo=True, input_names=["image"],
                                             output_names=names, optimize=True, verbose=False, **kwargs)
        onnx_program.save(path)
        return path
    axes = {name: {0: "n"} for name in names}
    if wrapper.with_masks:
        axes["masks"] = {0: "n", 1: "height", 2: "width"}
    if dynamic:
        axes["image"] = {1: "height", 2: "width"}
    kwargs = dict(input_names=["image"], output_names=names, dynamic_axes=axes)
    if opset is not None:
        kwargs["opset_version"] = opset
    import inspect

    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with torch.no_grad(), warnings.catch_warnings(), _cascade_gradient_scaling_as_identity():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), path, **kwargs)
    return path


def compare_detections(ref, out, box_tol: float = 1e-3, score_tol: float = 1e-5, mask_iou: float = 0.99,
                       require_detections: bool = False) -> dict:
    """Compare two ``(boxes, scores, classes[, masks])`` results: counts, then a one-to-one
    match of each reference detection with an unused output detection of the same class
    within ``box_tol`` px and ``score_tol`` (order-free: exact score ties may come out in
    either order); with masks, each matched pair's mask IoU must be >= ``mask_iou``. Returns
    counts, whether all matched, the largest box/score differences of the matched pairs
    (row-wise when nothing matches) and, with masks, the smallest mask IoU.
    ``require_detections``: refuse (ValueError) a reference without detections, where the
    comparison would be empty; results with and without masks never match."""
    n_ref, n_out = int(ref[0].shape[0]), int(out[0].shape[0])
    if require_detections and n_ref == 0:
        raise ValueError("the reference has no detections: the comparison would be empty")
    res = {"n_eager": n_ref, "n_exported": n_out, "all_matched": False, "box_max_abs": None, "score_max_abs": None}
    if n_ref != n_out or len(ref) != len(out):
        return res
    if n_ref == 0:
        res.update(all_matched=True, box_max_abs=0.0, score_max_abs=0.0)
        return res
    box_d = (ref[0][:, None, :].float() - out[0][None, :, :].float()).abs().amax(-1)
    score_d = (ref[1][:, None].float() - out[1][None, :].float()).abs()
    ok = (box_d <= box_tol) & (score_d <= score_tol) & (ref[2][:, None].long() == out[2][None, :].long())
    used = torch.zeros(n_out, dtype=torch.bool)
    boxes, scores, ious, matched = [], [], [], True
    for i in range(n_ref):
        cand = (ok[i] & ~used).nonzero().flatten()
        if not len(cand):
            matched = False
            continue
        j = int(cand[0])
        used[j] = True
        boxes.append(float(box_d[i, j]))
        scores.append(float(score_d[i, j]))
        if len(ref) > 3 and len(out) > 3:  # masks [N, H, W]
            a, b = ref[3][i].bool(), out[3][j].bool()
            union = int((a | b).sum()) if a.shape == b.shape else 0
            ious.append(int((a & b).sum()) / union if union else float(a.shape == b.shape))
    if ious:
        res["mask_iou_min"] = min(ious)
        matched = matched and res["mask_iou_min"] >= mask_iou
    res["all_matched"] = matched
    res["box_max_abs"] = max(boxes) if boxes else float(box_d.diagonal().max())
    res["score_max_abs"] = max(scores) if scores else float(score_d.diagonal().max())
    return res
