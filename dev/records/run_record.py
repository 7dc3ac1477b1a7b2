"""One run's record of where it ran, written when each part of the run starts.

A run trains in one or more segments (a first start, then each ``--resume``). Before each
segment starts, :func:`start_segment` appends the segment's provenance to the run's
``ablate_run.json``; a segment on another device, processor class, thread count, version
set or commit than the first marks the run ``mixed``: the pairing rule pairs it with nothing.
:func:`end_segment` adds the segment's seconds. The record's top level is the first
segment's provenance plus ``segments``, ``resumed`` and ``mixed``.
"""
import json
import os

from .provenance import provenance

__all__ = ["RUN_INFO", "start_segment", "end_segment", "read_record"]

RUN_INFO = "ablate_run.json"
# what must not change between the segments of one run
SAME_ACROSS_SEGMENTS = ("commit", "clean", "processor", "device", "threads")


def _key(seg):
    versions = seg.get("versions") or {}
    return ({k: seg.get(k) for k in SAME_ACROSS_SEGMENTS},
            {k: versions.get(k) for k in ("torch", "torchvision", "detectron2")})


def read_record(out):
    path = os.path.join(out, RUN_INFO)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write(out, rec):
    path = os.path.join(out, RUN_INFO)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, path)


def start_segment(out, threads=None, device="cpu", prov=None):
    """Record the provenance of the segment about to start in ``out``; returns the record.
    ``prov`` (a :func:`provenance` dict) defaults to this process's."""
    seg = prov or provenance(threads=threads, device=device)
    old = read_record(out)
    segments = list((old or {}).get("segments") or [])
    if old and not segments:
        # a record of the old form (written when the run ended): its start is not known
        seg = dict(seg, after_unrecorded_start=True)
    segments.append(seg)
    first = segments[0]
    mixed = any(_key(s) != _key(first) for s in segments[1:]) or bool(old and not old.get("segments"))
    rec = {k: v for k, v in first.items() if k != "seconds"}
    rec.update(segments=segments, resumed=len(segments) > 1, mixed=mixed)
    os.makedirs(out, exist_ok=True)
    _write(out, rec)
    return rec


def end_segment(out, seconds):
    """Add the seconds of the segment that just ended (and their sum) to the record."""
    rec = read_record(out)
    if not rec or not rec.get("segments"):
        raise ValueError(f"{out}: no segment was started (start_segment first)")
    rec["segments"][-1]["seconds"] = seconds
    rec["seconds"] = round(sum(s.get("seconds") or 0.0 for s in rec["segments"]), 1)
    _write(out, rec)
    return rec


# a run's raw outputs, kept beside its record: what its figures can be recomputed from
OUTPUT_FILES = ("eval_results.json", "metrics_last.json", "coco_instances_results.json.gz")


def collect_outputs(run_dir, dest):
    """Copy a finished run's raw outputs from ``run_dir`` into ``dest``: its
    ``eval_results.json``, the last line of its ``metrics.json`` (``metrics_last.json``) and
    its detections on the val set (detectron2's ``inference/<dataset>/coco_instances_results.json``,
    gzipped; with several test sets, the first by name). Returns the names written; a missing
    source is skipped (and not listed)."""
    import glob
    import gzip
    import shutil

    os.makedirs(dest, exist_ok=True)
    written = []
    src = os.path.join(run_dir, "eval_results.json")
    if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(dest, "eval_results.json"))
        written.append("eval_results.json")
    src = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(src):
        with open(src) as f:
            lines = [line for line in f if line.strip()]
        if lines:
            with open(os.path.join(dest, "metrics_last.json"), "w") as f:
                f.write(lines[-1].strip() + "\n")
            written.append("metrics_last.json")
    found = sorted(glob.glob(os.path.join(run_dir, "inference", "*", "coco_instances_results.json")))
    found += sorted(glob.glob(os.path.join(run_dir, "inference", "coco_instances_results.json")))
    if found:
        src = found[0]
        with open(src, "rb") as f_in, gzip.GzipFile(os.path.join(dest, "coco_instances_results.json.gz"), "wb",
                                                    mtime=0) as f_out:
            shutil.copyfileobj(f_in, f_out)
        written.append("coco_instances_results.json.gz")
    return written


def recompute_box_ap(outputs_dir, gt_json, image_ids=None):
    """Box AP (x100, COCO's) of the detections in ``outputs_dir`` against ``gt_json``,
    with pycocotools, over ``image_ids`` (default: every image of ``gt_json``, as
    detectron2's ``COCOEvaluator.evaluate()`` scores them)."""
    import contextlib
    import gzip
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with gzip.open(os.path.join(outputs_dir, "coco_instances_results.json.gz"), "rt") as f:
        dets = json.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        if not dets:
            return 0.0
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0] * 100)
