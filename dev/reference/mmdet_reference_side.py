"""The reference side of dev/reference/compare_with_mmdet.py: runs inside an mmdetection (3.x)
environment, never in libra-d2's. It imports only torch, numpy, mmengine and mmdet.

    MMDET_PYTHON dev/reference/mmdet_reference_side.py run --config CFG --checkpoint CKPT --io DIR
    MMDET_PYTHON dev/reference/mmdet_reference_side.py init-random --config CFG --out CKPT [--seed N]

``run`` reads DIR/request.json (written by compare_with_mmdet.py) and DIR/image_bgr.npy,
DIR/priority.npy, and writes DIR/reference.npz and DIR/reference.json: the neck outputs,
the detections, and (when requested) the training-loss terms under the given sampler
settings, with the samplers' random draws replaced by a shared priority order.

``init-random`` builds the model from the reference config with its own random
initialisation (no pretrained download), spreads the classifier's logits so that a
random-weight model produces non-trivial detections, and saves it with mmengine's
``save_checkpoint`` (the reference's own checkpoint format).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch


def choose_by_priority(gallery: torch.Tensor, num: int, priority: torch.Tensor) -> torch.Tensor:
    """The ``num`` entries of ``gallery`` (indices) with the smallest ``priority[index]``:
    the shared, deterministic replacement of a uniform random draw. Both sides use it."""
    gallery = gallery.flatten()
    order = torch.argsort(priority[gallery.long().cpu()], stable=True)
    return gallery[order[:num].to(gallery.device)]


def _build(config, checkpoint=None, overrides=None):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None  # no pretrained download; the checkpoint sets everything
    for path, value in (overrides or {}).items():
        node = cfg.model
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    model = MODELS.build(cfg.model)
    model.init_weights()
    if checkpoint:
        from mmengine.runner import load_checkpoint

        load_checkpoint(model, checkpoint, map_location="cpu", strict=True)
    return model


def _sample(image_bgr, gt=None):
    return _batch([image_bgr], None if gt is None else [gt])


def _batch(images_bgr, gts=None):
    """mmdetection's model input for these images (and ground truth): the data preprocessor
    pads the batch and sets each image's own padded shape, as in its training loop."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    inputs, samples = [], []
    for i, image_bgr in enumerate(images_bgr):
        h, w = image_bgr.shape[:2]
        ds = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                         pad_shape=(h, w), batch_input_shape=(h, w), img_id=i))
        if gts is not None:
            ds.gt_instances = InstanceData(bboxes=torch.tensor(gts[i]["boxes"], dtype=torch.float32).reshape(-1, 4),
                                           labels=torch.tensor(gts[i]["classes"], dtype=torch.long))
        inputs.append(torch.from_numpy(np.ascontiguousarray(image_bgr.transpose(2, 0, 1))))
        samples.append(ds)
    return {"inputs": inputs, "data_samples": samples}


def _retinanet_losses(model, images, gts):
    """RetinaNet's loss terms through the head's own ``loss_by_feat``, with what its targets
    held: foreground anchors, anchors of zero weight (ignored or outside an image's area),
    and the loss divisor (``avg_factor``)."""
    seen = {}
    head = model.bbox_head
    original = head.get_targets

    def get_targets(*args, **kwargs):
        out = original(*args, **kwargs)
        labels = torch.cat([x.flatten() for x in out[0]])
        weights = torch.cat([x.flatten() for x in out[1]])
        seen.update(foreground=int(((labels >= 0) & (labels < head.num_classes) & (weights > 0)).sum()),
                    zero_weight=int((weights == 0).sum()), anchors=int(labels.numel()), avg_factor=float(out[4]))
        return out

    head.get_targets = get_targets
    data = model.data_preprocessor(_batch(images, gts), training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    terms = {k: float(sum(v) if isinstance(v, (list, tuple)) else v) for k, v in losses.items()}
    seen["pad_shapes"] = [list(ds.metainfo["pad_shape"]) for ds in data["data_samples"]]
    seen["batch_input_shape"] = list(data["data_samples"][0].metainfo["batch_input_shape"])
    return terms, seen


def _ohem_choice(model, image, gt, proposals):
    """The boxes the RoI head's own sampler (``OHEMSampler`` via the config) takes for the
    given proposals: its ``sample`` is wrapped to record the result, nothing re-implemented."""
    from mmengine.structures import InstanceData

    roi_head = model.roi_head
    sampler = roi_head.bbox_sampler
    original = sampler.sample
    seen = {}

    def sample(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.update(positive=result.pos_priors.detach().numpy().tolist(),
                    negative=result.neg_priors.detach().numpy().tolist(), sampler=type(sampler).__name__)
        return result

    sampler.sample = sample
    data = model.data_preprocessor(_sample(image, gt), training=True)
    feats = model.extract_feat(data["inputs"])
    rpn = InstanceData(bboxes=torch.tensor(proposals, dtype=torch.float32),
                       scores=torch.zeros(len(proposals)), labels=torch.zeros(len(proposals), dtype=torch.long))
    roi_head.loss(feats, [rpn], data["data_samples"])
    return seen


def _patch_random_draws(priority):
    """Every RandomSampler draw (the RPN's, and the ROI stage's fallbacks) picks by priority."""
    from mmdet.models.task_modules.samplers import RandomSampler

    def random_choice(self, gallery, num):
        if isinstance(gallery, torch.Tensor):
            return choose_by_priority(gallery, num, priority)
        return choose_by_priority(torch.as_tensor(np.asarray(gallery)), num, priority).numpy()

    RandomSampler.random_choice = random_choice


def run(args):
    req = json.load(open(os.path.join(args.io, "request.json")))
    image = np.load(os.path.join(args.io, "image_bgr.npy"))
    priority = torch.from_numpy(np.load(os.path.join(args.io, "priority.npy")))
    out_arrays, out = {}, {"mmdet_version": None, "losses": {}}
    import mmdet

    out["mmdet_version"] = mmdet.__version__
    torch.manual_seed(0)
    model = _build(args.config, args.checkpoint).eval()
    with torch.no_grad():
        data = model.data_preprocessor(_sample(image), training=False)
        feats = model.extract_feat(data["inputs"])
        for i, f in enumerate(feats):
            out_arrays[f"neck{i}"] = f[0].numpy()
        pred = model.predict(data["inputs"], data["data_samples"], rescale=True)[0].pred_instances
    out_arrays["det_boxes"] = pred.bboxes.numpy()
    out_arrays["det_scores"] = pred.scores.numpy()
    out_arrays["det_classes"] = pred.labels.numpy()

    if req.get("train_losses"):
        _patch_random_draws(priority)
        for setting in req["settings"]:
            torch.manual_seed(0)
            model = _build(args.config, args.checkpoint, setting["mmdet_overrides"]).train()
            data = model.data_preprocessor(_sample(image, req["gt"]), training=True)
            losses = model.loss(data["inputs"], data["data_samples"])
            terms = {}
            for k, v in losses.items():
                v = sum(v) if isinstance(v, (list, tuple)) else v
                terms[k] = float(v.detach().float().sum())
            out["losses"][setting["name"]] = terms
    if req.get("retinanet_losses"):
        extra = [np.load(os.path.join(args.io, f"image{i}_bgr.npy")) for i in range(1, req.get("n_images", 1))]
        all_images = [image] + extra
        out["retinanet_losses"] = {}
        for setting in req["retinanet_losses"]:
            torch.manual_seed(0)
            model = _build(args.config, args.checkpoint).train()
            idx = setting["images"]
            terms, seen = _retinanet_losses(model, [all_images[i] for i in idx], [req["gts"][i] for i in idx])
            out["retinanet_losses"][setting["name"]] = {"terms": terms, "targets": seen}
    if req.get("ohem"):
        out["ohem"] = {}
        for case in req["ohem"]:
            torch.manual_seed(0)
            model = _build(args.config, args.checkpoint, case["mmdet_overrides"]).train()
            out["ohem"][case["name"]] = _ohem_choice(model, image, req["gt"], case["proposals"])
    np.savez(os.path.join(args.io, "reference.npz"), **out_arrays)
    json.dump(out, open(os.path.join(args.io, "reference.json"), "w"), indent=1)


def init_random(args):
    from mmengine.runner import save_checkpoint

    torch.manual_seed(args.seed)
    model = _build(args.config)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        # A fresh model is too regular to compare on: its classifiers score every class (and
        # the RPN every anchor) about alike, so rankings are decided by near-ties, and its
        # zero-initialised tensors (the non-local block's output conv, biases) switch parts
        # off. Spread the classifiers' logits and give every all-zero tensor small values.
        # RetinaNet's head convs get He-like weights so that its features do not fade.
        for name, p in model.named_parameters():
            if name.endswith(("fc_cls.weight", "retina_cls.weight", "rpn_cls.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * args.cls_std)
            elif args.reg_std and name.endswith(("fc_reg.weight", "retina_reg.weight", "rpn_reg.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * args.reg_std)
            elif name.endswith(("fc_cls.bias", "retina_cls.bias", "rpn_cls.bias")):
                p.zero_()
            elif "_convs." in name and name.startswith("bbox_head.") and name.endswith(".weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    meta = {"mmdet_version": __import__("mmdet").__version__, "note": "random weights for a parity check",
            "seed": args.seed, "config": os.path.basename(args.config)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_checkpoint({"meta": meta, "state_dict": model.state_dict()}, args.out)
    print(f"wrote {args.out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--config", required=True)
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--io", required=True)
    i = sub.add_parser("init-random")
    i.add_argument("--config", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--cls-std", type=float, default=0.5, help="std of the classifiers' weights")
    i.add_argument("--reg-std", type=float, default=0.0,
                   help="std of the box regressors' weights (0: the config's initialisation); large values "
                   "push boxes across the image border, where clipping can leave them empty")
    args = ap.parse_args(argv)
    return run(args) if args.cmd == "run" else init_random(args)


if __name__ == "__main__":
    sys.exit(main())
