"""The inference path of a detectron2 detector written for ``torch.export``.

detectron2's inference takes Python decisions on tensor values (``if not valid.all()``,
``if keep.sum() != len(boxes)``, ``min(k, len(idx))``, torchvision's choice of NMS
algorithm by box count, padding computed through tensors) and on sizes computed in floating
point (the anchor grid's ``arange`` with a float step). ``torch.export`` cannot trace those
with a symbolic input size: it fails on the first data-dependent branch. The functions here
compute the same detections from the same modules (backbone, RPN head, box pooler, box head,
box predictor, RetinaNet head: all detectron2's or libra-d2's own, called as they are) with
the branch-free equivalents:

- padding: integer arithmetic on the input's (symbolic) height and width;
- anchors: integer grids times the stride (the same float values as detectron2's grids);
- filters (finite, non-empty, above the score threshold) always applied as masks: a mask
  that keeps everything is the identity, so eager results do not change;
- ``min(k, n)`` as ``torch.sym_min``; class-wise NMS as one ``nms`` over boxes offset per
  class (torchvision's own algorithm for more than 1000 boxes on CPU; below that it loops
  over the classes, which gives the same result up to float rounding of IoUs at exactly the
  threshold).

Every function takes one image (batch size 1), as :class:`~libra_d2.export.ExportableDetector`
does. Outputs are plain tensors; nothing here is used in training.
"""
import sys
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import nms

__all__ = ["clip_boxes", "nonempty_boxes", "preprocess", "level_anchors", "batched_nms_offset", "rpn_proposals", "box_detections",
           "cascade_detections", "mask_probabilities", "paste_masks", "retinanet_detections"]


def preprocess(model, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple]:
    """Normalise ``image`` [3, H, W] with the model's pixel mean/std and pad it at the bottom
    and right to the backbone's size divisibility. Returns ([1, 3, Hp, Wp], (H, W))."""
    h, w = image.shape[-2], image.shape[-1]
    x = (image - model.pixel_mean) / model.pixel_std
    d = int(getattr(model.backbone, "size_divisibility", 0) or 0)
    if d > 1:
        x = F.pad(x, [0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h], value=0.0)
    return x.unsqueeze(0), (h, w)


def level_anchors(anchor_generator, features: List[torch.Tensor]) -> List[torch.Tensor]:
    """Anchors [Hi*Wi*A, 4] per level, ordered (row, column, cell anchor) as detectron2's
    ``DefaultAnchorGenerator`` orders them (and as the heads' outputs are flattened)."""
    out = []
    offset = float(anchor_generator.offset)
    for f, stride, cell in zip(features, anchor_generator.strides, anchor_generator.cell_anchors):
        hi, wi = f.shape[-2], f.shape[-1]
        xs = (torch.arange(wi, device=f.device, dtype=torch.float32) + offset) * float(stride)
        ys = (torch.arange(hi, device=f.device, dtype=torch.float32) + offset) * float(stride)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack((xx, yy, xx, yy), dim=1)
        out.append((shifts[:, None, :] + cell.to(shifts.dtype)[None, :, :]).reshape(-1, 4))
    return out


def batched_nms_offset(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """NMS within each group: boxes of different groups are moved apart so that they never
    overlap, then one ``nms``. Returns kept indices by decreasing score."""
    # the largest coordinate (0 for no boxes: no branch on the count)
    span = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max() + 1.0
    shifted = boxes + (groups.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou)


def clip_boxes(boxes: torch.Tensor, size) -> torch.Tensor:
    """Boxes ``(..., 4)`` XYXY clamped to an image of ``size`` (h, w), traceable."""
    h, w = size
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0.clamp(min=0, max=w), y0.clamp(min=0, max=h), x1.clamp(min=0, max=w),
                        y1.clamp(min=0, max=h)), dim=-1)


def nonempty_boxes(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Boolean mask ``(N,)``: boxes ``(N, 4)`` wider and taller than ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def rpn_proposals(rpn, features: Dict[str, torch.Tensor], image_size) -> torch.Tensor:
    """Test-time proposals [P, 4] of detectron2's ``RPN`` (or ``LibraRPN``) for one image:
    per level the top ``pre_nms_topk`` anchors by objectness, decoded, the invalid ones
    dropped, clipped, the small ones dropped, NMS per level, the top ``post_nms_topk``."""
    feats = [features[f] for f in rpn.in_features]
    logits, deltas = rpn.rpn_head(feats)
    anchors = level_anchors(rpn.anchor_generator, feats)
    pre_topk, post_topk = rpn.pre_nms_topk[False], rpn.post_nms_topk[False]
    boxes_all, scores_all, levels_all = [], [], []
    box_dim = rpn.anchor_generator.box_dim
    for lvl, (lg, dl, anc) in enumerate(zip(logits, deltas, anchors)):
        score = lg[0].permute(1, 2, 0).reshape(-1)  # (Hi, Wi, A)
        a = lg.shape[1]
        d = dl[0].reshape(a, box_dim, dl.shape[-2], dl.shape[-1]).permute(2, 3, 0, 1).reshape(-1, box_dim)
        k = torch.sym_min(pre_topk, score.shape[0])
        top_scores, idx = score.topk(k)
        boxes_all.append(rpn.box2box_transform.apply_deltas(d[idx], anc[idx]))
        scores_all.append(top_scores)
        levels_all.append(torch.full_like(idx, lvl))
    boxes, scores, levels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(levels_all)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
    boxes = clip_boxes(boxes, image_size)
    keep = nonempty_boxes(boxes, rpn.min_box_size)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = batched_nms_offset(boxes, scores, levels, rpn.nms_thresh)[:post_topk]
    return boxes[keep]


def box_detections(roi_heads, features: Dict[str, torch.Tensor], proposals: torch.Tensor, image_size):
    """Detections (boxes [N, 4], scores [N], classes [N]) of a ``StandardROIHeads`` (or
    ``LibraROIHeads``) box branch on ``proposals`` [P, 4]: pool, box head, predictor,
    softmax, per-class decoding, clip, score threshold, class-wise NMS, top-k."""

    feats = [features[f] for f in roi_heads.box_in_features]
    x = _pool(roi_heads.box_pooler, feats, proposals)
    x = roi_heads.box_head(x)
    predictor = roi_heads.box_predictor
    logits, deltas = predictor(x)
    return _fast_rcnn_postprocess(predictor, logits, deltas, proposals, image_size)


def cascade_detections(roi_heads, features: Dict[str, torch.Tensor], proposals: torch.Tensor, image_size):
    """Detections of a ``CascadeROIHeads`` (or ``LibraCascadeROIHeads``) on ``proposals``
    [P, 4]: each stage pools the previous stage's boxes (clipped, none dropped), the class
    scores are the mean of the stages' softmax scores, the boxes the last stage's; then the
    last predictor's threshold, NMS and top-k."""
    feats = [features[f] for f in roi_heads.box_in_features]
    boxes, scores = proposals, None
    n = roi_heads.num_cascade_stages
    for k in range(n):
        if k > 0:
            boxes = clip_boxes(boxes, image_size)
        x = roi_heads.box_head[k](_pool(roi_heads.box_pooler, feats, boxes))
        predictor = roi_heads.box_predictor[k]
        logits, deltas = predictor(x)
        probs = F.softmax(logits, dim=-1)
        scores = probs if scores is None else scores + probs
        boxes = predictor.box2box_transform.apply_deltas(deltas, boxes)  # class-agnostic: [P, 4]
    return _fast_rcnn_postprocess_scored(predictor, scores * (1.0 / n), boxes, image_size)


def mask_probabilities(roi_heads, features: Dict[str, torch.Tensor], boxes: torch.Tensor,
                       classes: torch.Tensor) -> torch.Tensor:
    """The mask head's foreground probabilities [N, M, M] for detections ``boxes`` [N, 4] of
    ``classes`` [N]: pooled, the head's layers, the predicted class's channel (or the only
    one, class-agnostic), sigmoid (detectron2's ``mask_rcnn_inference``)."""
    feats = [features[f] for f in roi_heads.mask_in_features]
    logits = _sequential(roi_heads.mask_head, _pool(roi_heads.mask_pooler, feats, boxes))
    if logits.shape[1] == 1:
        return logits[:, 0].sigmoid()
    return logits[torch.arange(logits.shape[0], device=logits.device), classes].sigmoid()


def _sequential(head, x: torch.Tensor) -> torch.Tensor:
    """A sequential head's layers in order (``MaskRCNNConvUpsampleHead.layers``), with
    detectron2's ``Conv2d`` (convolution, norm, activation) called through its parts: its
    forward asks ``x.numel() == 0``, which has no answer for a data-dependent box count."""
    from detectron2.layers import Conv2d

    for layer in head.children():
        if isinstance(layer, Conv2d):
            x = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            if layer.norm is not None:
                x = layer.norm(x)
            if layer.activation is not None:
                x = layer.activation(x)
        else:
            x = layer(x)
    return x


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, image_size, threshold: float = 0.5) -> torch.Tensor:
    """Masks [N, H, W] (bool) in image pixels: each M x M probability map resampled
    (bilinear, ``align_corners=False``) onto its box, pixel centres at +0.5, zero outside the
    map, then thresholded, as detectron2's ``paste_masks_in_image``. Written once over the
    whole image (detectron2 pastes each mask into a window around its box on CPU, which
    leaves pixels out of that window at zero); memory N x H x W floats."""
    h, w = image_size
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5
    gy = (ys[None, :] - y0) / (y1 - y0) * 2 - 1  # [N, H]
    gx = (xs[None, :] - x0) / (x1 - x0) * 2 - 1  # [N, W]
    n = boxes.shape[0]
    grid = torch.stack((gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)), dim=3)
    out = F.grid_sample(probs[:, None].to(torch.float32), grid, align_corners=False)
    return out[:, 0] >= threshold


def _pool(pooler, feats: List[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """``ROIPooler`` on one image's boxes [P, 4] -> [P, C, S, S]: each box pooled from the
    level detectron2's ``assign_boxes_to_levels`` gives it (its pooler-format conversion
    takes ``len()`` of the box list, an integer that export cannot have)."""
    rois = torch.cat((boxes.new_zeros(boxes.shape[0], 1), boxes), dim=1)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](feats[0], rois)
    # detectron2's assign_boxes_to_levels, on the tensor (its Boxes() checks numel() == 0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.floor(pooler.canonical_level + torch.log2(torch.sqrt(area) / pooler.canonical_box_size
                                                             + sys.float_info.epsilon))
    levels = levels.clamp(min=pooler.min_level, max=pooler.max_level).to(torch.int64) - pooler.min_level
    size = pooler.output_size
    out = feats[0].new_zeros((boxes.shape[0], feats[0].shape[1], size[0], size[1]))
    for level, level_pooler in enumerate(pooler.level_poolers):
        inds = (levels == level).nonzero()[:, 0]
        out = out.index_put((inds,), level_pooler(feats[level], rois[inds]))
    return out


def _fast_rcnn_postprocess(predictor, logits, deltas, proposals, image_size):
    boxes = predictor.box2box_transform.apply_deltas(deltas, proposals)  # [P, K*4] or [P, 4]
    return _fast_rcnn_postprocess_scored(predictor, F.softmax(logits, dim=-1), boxes, image_size)


def _fast_rcnn_postprocess_scored(predictor, scores, boxes, image_size):
    """detectron2's ``fast_rcnn_inference_single_image`` on scores [P, K+1] and boxes
    [P, K*4] or [P, 4], branch-free."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    num_reg = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), image_size).reshape(-1, num_reg, 4)
    mask = scores > predictor.test_score_thresh
    inds = mask.nonzero()
    boxes = boxes[inds[:, 0], 0] if num_reg == 1 else boxes[mask]
    scores = scores[mask]
    keep = batched_nms_offset(boxes, scores, inds[:, 1], predictor.test_nms_thresh)
    if predictor.test_topk_per_image >= 0:
        keep = keep[:predictor.test_topk_per_image]
    return boxes[keep], scores[keep], inds[keep, 1]


def retinanet_detections(model, features: Dict[str, torch.Tensor], image_size):
    """Detections of detectron2's ``RetinaNet`` (or ``LibraRetinaNet``, whose
    ``clip_before_nms`` is honoured) for one image: per level the anchors x classes above the
    score threshold, the top ``test_topk_candidates`` by score, decoded; then class-wise NMS
    and the top ``max_detections_per_image``."""
    feats = [features[f] for f in model.head_in_features]
    logits, deltas = model.head(feats)
    anchors = level_anchors(model.anchor_generator, feats)
    k_cls = model.num_classes
    clip_first = bool(getattr(model, "clip_before_nms", False))
    boxes_all, scores_all, classes_all = [], [], []
    for lg, dl, anc in zip(logits, deltas, anchors):
        a = anc.shape[0] // (lg.shape[-2] * lg.shape[-1])
        prob = lg[0].reshape(a, k_cls, lg.shape[-2], lg.shape[-1]).permute(2, 3, 0, 1).reshape(-1).sigmoid()
        d = dl[0].reshape(a, 4, dl.shape[-2], dl.shape[-1]).permute(2, 3, 0, 1).reshape(-1, 4)
        keep = prob > model.test_score_thresh
        prob = prob[keep]
        idx = keep.nonzero()[:, 0]
        prob, order = prob.sort(descending=True)
        n = torch.sym_min(model.test_topk_candidates, prob.shape[0])
        prob, idx = prob[:n], idx[order[:n]]
        anchor_idx, cls = idx // k_cls, idx % k_cls
        boxes = model.box2box_transform.apply_deltas(d[anchor_idx], anc[anchor_idx])
        if clip_first:
            boxes = clip_boxes(boxes, image_size)
            ok = nonempty_boxes(boxes)
            boxes, prob, cls = boxes[ok], prob[ok], cls[ok]
        boxes_all.append(boxes)
        scores_all.append(prob)
        classes_all.append(cls)
    boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
    keep = batched_nms_offset(boxes, scores, classes, model.test_nms_thresh)[:model.max_detections_per_image]
    return boxes[keep], scores[keep], classes[keep]
