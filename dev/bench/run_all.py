#!/usr/bin/env python
"""`make bench`: speed and memory figures of libra-d2, printed as a table and written to
output/bench/results.json.

Every ratio is measured side by side in one process, interleaved (A, B, A, B, ...), and
reported as a ratio of medians; the machine (CPU model, cores, torch) is recorded too.

* sampler_speedup_2k / _100k: a faithful reference of the published IoU-balanced negative
  sampler (dev/bench/reference_sampler.py: host copy, Python sets, per-bin set
  intersections) divided by libra_d2's, on 2,000 and 100,000 proposals (half IoU 0, 40%
  in (0, 0.5), 10% >= 0.5), one CPU thread. Targets >= 6 and >= 25.
* sampler_growth_2k_to_100k: ours at 100k / ours at 2k. Target <= 75 (linear: 50).
* train_iter_ratio / infer_ratio: Libra R-CNN R-50-FPN / Faster R-CNN R-50-FPN iteration
  time, batch 2, short side 512 (``--short 800``: COCO scale), same inputs and weights, after
  warm-up. Targets <= 1.10. The Libra side's time spent in sampling, BFP and the box loss,
  and images/s at inference (the reference's measure), are recorded too. On CUDA also
  train_mem_ratio (peak memory of one training iteration, Libra / plain) and
  train_iter_ratio_amp (the iteration under float16 autocast).
* ohem_train_iter_ratio: Faster R-CNN R-50-FPN with OHEM (every proposal scored by the box
  head under no_grad before sampling) / with random sampling, one training iteration, same
  inputs and weights. Informational (no target).
* cpu_bf16_train_iter_ratio (CPU only): the built-in Libra R-CNN's training iteration under
  bfloat16 autocast / in float32, with ``cpu_bf16_native`` (amx_bf16 / avx512_bf16 present).
  Informational; a speed-up needs native bfloat16.
* bfp_mem_growth_4x_pixels: peak memory of BFP forward+backward (default non-local path)
  when the refine level holds 4x the positions (50x84 -> 100x168), each size in a fresh
  subprocess (peak RSS above the pre-run RSS; the kernel's peak mark is reset first). Target <= 5.0; the plain-matmul path's
  figure is printed beside it.

* export_torchscript_latency_ratio / export_onnxruntime_latency_ratio /
  export_torch_export_latency_ratio: the exported built-in Libra R-CNN (tools/export_model.py's
  artefacts: traced module, ONNX through onnxruntime, the ExportedProgram's module) / the eager
  model, one 192x256 image. ``--only export_aoti`` adds the AOTInductor package
  (export_aoti_latency_ratio; opt-in: its compile takes ~15 minutes on 2 cores).
  Informational (no target).
* padded_px_per_batch_grouped / _ungrouped, padding_share_*: padding in training batches of
  the mixed-aspect built-in data with aspect-ratio grouping on / off (exact-resume loader).

Stability: each speed ratio is the median over ``--rounds`` rounds (default 5) of per-round
ratios of medians, with the garbage collector run before and paused during every round;
the sampler's round-ratio range is printed beside it. On CPU the sampler figures run in a
subprocess with glibc's malloc thresholds fixed (MALLOC_ENV below: the process's earlier
allocations otherwise decided whether the 100k arrays were fresh mmaps, a 1.45x swing).

Options: --device cuda (when a GPU is present), --reps N, --rounds N, --only NAME[,NAME].
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

TARGETS = {
    "sampler_speedup_2k": (">=", 6.0),
    "sampler_speedup_100k": (">=", 25.0),
    "sampler_growth_2k_to_100k": ("<=", 75.0),
    "train_iter_ratio": ("<=", 1.10),
    "infer_ratio": ("<=", 1.10),
    "train_mem_ratio": ("<=", 1.10),
    "train_iter_ratio_amp": ("<=", 1.10),
    "bfp_mem_growth_4x_pixels": ("<=", 5.0),
}


def bench_table(results) -> str:
    """The markdown table of a results dict: every scalar figure, its target and whether it is met."""
    lines = [f"| {'figure':<34} | {'value':>9} | {'target':>8} | ok  |", f"|{'-' * 36}|{'-' * 11}|{'-' * 10}|-----|"]
    for k, v in results.items():
        if k in ("machine", "provenance") or isinstance(v, (list, dict)):
            continue
        target = TARGETS.get(k)
        if isinstance(v, bool):
            checked = k in TARGETS  # facts such as cpu_bf16_native are reported, not checked
            lines.append(f"| {k:<34} | {str(v):>9} | {'True' if checked else '':>8} | "
                         f"{('yes' if v else 'NO') if checked else '':<3} |")
            continue
        ok = ""
        tgt = ""
        if target:
            op, bound = target
            ok = "yes" if (v >= bound if op == ">=" else v <= bound) else "NO"
            tgt = f"{op}{bound:g}"
        lines.append(f"| {k:<34} | {v:9.3f} | {tgt:>8} | {ok:<3} |")
    return "\n".join(lines)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def paired_ratio(fa, fb, device, rounds, reps):
    """Ratio time(fa) / time(fb), robust to a noisy machine: ``rounds`` rounds of ``reps``
    interleaved calls (a, b, a, b, ...); each round gives median(a) / median(b); the result is
    the median over rounds. Python's cyclic garbage collector runs once before each round and
    is paused during it (the reference sampler allocates large Python sets, and a collection
    landing inside one side's timing was the main source of run-to-run spread; collecting
    before every call instead would time both sides with cold caches). Also returns the
    per-side medians over all calls and the range of the round ratios."""
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            ra, rb = [], []
            for _ in range(reps):
                ra.append(timed(fa, device))
                rb.append(timed(fb, device))
        finally:
            gc.enable()
        ratios.append(statistics.median(ra) / statistics.median(rb))
        ta += ra
        tb += rb
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb), (min(ratios), max(ratios))


def iou_mix(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g)
    u = torch.rand(n, generator=g)
    iou = torch.where(u < 0.5, torch.zeros_like(x), torch.where(u < 0.9, x * 0.5, 0.5 + x * 0.5))
    return iou.to(device), (iou < 0.5).to(device)


# glibc's malloc serves blocks above its mmap threshold with fresh mmaps (page faults and
# zeroing on every call) and raises that threshold as large blocks are freed, so the cost of
# the 100k-proposal arrays depended on what the process had allocated before: in otherwise
# identical runs ours took 0.95 or 1.37 ms. The sampler figures are measured in a
# subprocess with both thresholds fixed (the same for both sides), which makes them repeatable.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}


def bench_sampler(device, reps, rounds):
    if device.type == "cpu" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        return _in_subprocess("sampler", device, reps, rounds, MALLOC_ENV)
    return _bench_sampler(device, reps, rounds)


def _in_subprocess(name, device, reps, rounds, env):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--only", name, "--device", str(device), "--reps", str(reps),
               "--rounds", str(rounds), "--output", out, "--quiet"]
        subprocess.run(cmd, check=True, env=dict(os.environ, **env), cwd=ROOT)
        with open(out) as f:
            res = json.load(f)
    if res.get("errors"):
        raise RuntimeError(f"{name} in a subprocess: {res['errors']}")
    for key in ("machine", "provenance", "errors", "section_seconds"):
        res.pop(key, None)
    return res


def _bench_sampler(device, reps, rounds):
    from dev.bench.reference_sampler import reference_iou_balanced_negatives
    from libra_d2.modeling.sampling import sample_iou_balanced_negatives

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for n, name in ((2000, "2k"), (100_000, "100k")):
            iou, cand = iou_mix(n, device)
            for _ in range(3):
                reference_iou_balanced_negatives(iou, cand, 384)
                sample_iou_balanced_negatives(iou, cand, 384)
            ratio, ref_t, our_t, spread = paired_ratio(
                lambda: reference_iou_balanced_negatives(iou, cand, 384),
                lambda: sample_iou_balanced_negatives(iou, cand, 384), device, rounds, reps * 10)
            out[f"sampler_ref_ms_{name}"] = ref_t * 1e3
            out[f"sampler_ours_ms_{name}"] = our_t * 1e3
            out[f"sampler_speedup_{name}"] = ratio
            out[f"sampler_speedup_{name}_round_min"], out[f"sampler_speedup_{name}_round_max"] = spread
        out["sampler_growth_2k_to_100k"] = out["sampler_ours_ms_100k"] / out["sampler_ours_ms_2k"]
    finally:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        out["sampler_cuda_syncs_ok"] = check_cuda_syncs(device)
    return out


def sync_check_args(device, n=100_000, num=384):
    """The sampler's inputs for the sync check: every one made before sync debugging starts,
    ``num`` a 0-d tensor on the device and ``max_num`` the host bound (a Python int ``num``
    would need a host-to-device copy inside the call, which the check rightly refuses)."""
    iou, cand = iou_mix(n, device)
    return {"max_iou": iou, "candidates": cand, "num": torch.tensor(num, device=device), "max_num": num}


def check_cuda_syncs(device):
    """Run our sampler with sync debug mode "error" up to the final index extraction."""
    from libra_d2.modeling.sampling import iou_balanced_negatives_select

    kwargs = sync_check_args(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        idx, keep = iou_balanced_negatives_select(**kwargs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    idx[keep]  # the one synchronising step
    return True


def detector_pair(device, short=512, other="libra_faster_rcnn_R_50_FPN_1x.yaml"):
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    from libra_d2.config import get_libra_cfg

    def cfg_for(name):
        cfg = get_libra_cfg(os.path.join(ROOT, "configs/COCO-Detection", name))
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device.type
        return cfg

    torch.manual_seed(0)
    base = build_model(cfg_for("faster_rcnn_R_50_FPN_1x.yaml"))
    libra = build_model(cfg_for(other))
    libra.load_state_dict(base.state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    h, w = short, int(short * 4 / 3)
    batch = []
    for i in range(2):
        boxes = []
        for _ in range(6):
            x0, y0 = float(torch.randint(0, w - 120, (1,), generator=g)), float(torch.randint(0, h - 120, (1,), generator=g))
            bw, bh = 30 + float(torch.randint(0, 90, (1,), generator=g)), 30 + float(torch.randint(0, 90, (1,), generator=g))
            boxes.append([x0, y0, x0 + bw, y0 + bh])
        inst = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.randint(0, 80, (6,), generator=g))
        batch.append({"image": (torch.rand(3, h, w, generator=g) * 255), "instances": inst, "height": h, "width": w})
    return base, libra, batch


class SectionTimer:
    """Wall time spent in chosen sub-modules / methods of the Libra model, per iteration."""

    def __init__(self, device):
        self.device = device
        self.total = {}

    def wrap_method(self, obj, name, key):
        orig = getattr(obj, name)

        def run(*a, **k):
            sync(self.device)
            t = time.perf_counter()
            r = orig(*a, **k)
            sync(self.device)
            self.total[key] = self.total.get(key, 0.0) + time.perf_counter() - t
            return r

        setattr(obj, name, run)


def sgd_train_step(models, batch):
    """step(m): one training iteration of ``m`` on ``batch`` (losses, backward, an SGD step
    at lr 0: the weights stay the same, so every timed iteration does the same work)."""
    from detectron2.utils.events import EventStorage

    opts = {m: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9) for m in models}

    def step(m):
        with EventStorage():
            losses = m(batch)
            opts[m].zero_grad()
            sum(losses.values()).backward()
            opts[m].step()

    return step


SHORT = {"value": 512}  # --short: the detector pair's input short side (COCO: 800, long side 4/3)


def _peak_mb(device, fn):
    """Peak device memory (MiB) allocated while ``fn()`` runs once (CUDA only)."""
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_detector(device, reps, rounds):

    base, libra, batch = detector_pair(device, short=SHORT["value"])
    timer = SectionTimer(device)
    timer.wrap_method(libra.roi_heads, "label_and_sample_proposals", "sampling")
    timer.wrap_method(libra.backbone.bfp, "forward", "bfp")
    timer.wrap_method(libra.roi_heads.box_predictor, "box_reg_loss", "box_loss")
    out = {}
    train_step = sgd_train_step((base, libra), batch)

    def infer(m):
        with torch.no_grad():
            m([{k: v for k, v in d.items() if k != "instances"} for d in batch])

    for mode, fn in (("train", train_step), ("infer", infer)):
        for m in (base, libra):
            m.train(mode == "train")
            fn(m)  # warm-up
            fn(m)
        timer.total.clear()
        key = "train_iter_ratio" if mode == "train" else "infer_ratio"
        ratio, tl, tb, _ = paired_ratio(lambda: fn(libra), lambda: fn(base), device, rounds, reps)
        out[key] = ratio
        out[f"{mode}_iter_s_baseline"] = tb
        out[f"{mode}_iter_s_libra"] = tl
        for k, v in timer.total.items():
            out[f"{mode}_libra_{k}_ms_per_iter"] = v / (reps * rounds) * 1e3
    out["infer_images_per_s_baseline"] = len(batch) / out["infer_iter_s_baseline"]
    out["infer_images_per_s_libra"] = len(batch) / out["infer_iter_s_libra"]
    out["input_hw"] = list(batch[0]["image"].shape[-2:])
    if device.type == "cuda":  # training memory, and the iteration under float16 autocast (AMPTrainer's)
        for m in (base, libra):
            m.train()
        mb = {m: _peak_mb(device, lambda m=m: train_step(m)) for m in (base, libra)}
        out["train_peak_mb_baseline"], out["train_peak_mb_libra"] = mb[base], mb[libra]
        out["train_mem_ratio"] = mb[libra] / mb[base]

        def amp_step(m):
            with torch.autocast("cuda", dtype=torch.float16):
                train_step(m)

        for m in (base, libra):
            amp_step(m)  # warm-up
        ratio, tl, tb, _ = paired_ratio(lambda: amp_step(libra), lambda: amp_step(base), device, rounds, reps)
        out.update(train_iter_ratio_amp=ratio, train_iter_s_baseline_amp=tb, train_iter_s_libra_amp=tl)
    return out


def bench_ohem(device, reps, rounds):
    """OHEM's extra cost: one training iteration of Faster R-CNN R-50-FPN with the ``ohem``
    samplers (every proposal scored by the box head first) / with detectron2's random
    sampling; same weights and inputs."""

    base, ohem, batch = detector_pair(device, other="ohem_faster_rcnn_R_50_FPN_1x.yaml")
    train_step = sgd_train_step((base, ohem), batch)
    for m in (base, ohem):
        m.train()
        train_step(m)  # warm-up
    ratio, to, tb, _ = paired_ratio(lambda: train_step(ohem), lambda: train_step(base), device, rounds, reps)
    return {"ohem_train_iter_ratio": ratio, "ohem_train_iter_s": to, "ohem_train_iter_s_random": tb}


def bench_cpu_bf16(device, reps, rounds):
    """SOLVER.AMP.ENABLED on CPU: one training iteration of the built-in Libra R-CNN (batch 4
    of the built-in data's size, 208x280) under bfloat16 autocast / in float32, side by side.
    Only a processor with native bfloat16 (``cpu_bf16_native``) can show a speed-up; elsewhere
    the figure measures torch's emulation (and training runs in float32)."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from libra_d2.config import get_libra_cfg
    from libra_d2.engine.cpu_amp import cpu_bf16_native

    if device.type != "cpu":
        return {}
    cfg = get_libra_cfg(os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(4):
        inst = Instances((208, 280), gt_boxes=Boxes(torch.tensor([[20.0, 30, 90, 110], [120, 60, 200, 150]])),
                         gt_classes=torch.tensor([0, 2]))
        batch.append({"image": torch.rand(3, 208, 280, generator=g) * 255, "instances": inst, "height": 208, "width": 280})

    def step(bf16):
        with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            total = sum(model(batch).values())
        opt.zero_grad()
        total.backward()
        opt.step()

    step(True)
    step(False)
    ratio, tb, tf, _ = paired_ratio(lambda: step(True), lambda: step(False), device, rounds, reps)
    return {"cpu_bf16_native": cpu_bf16_native(), "cpu_bf16_train_iter_ratio": ratio, "cpu_bf16_train_iter_s": tb,
            "cpu_fp32_train_iter_s": tf}


BFP_CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from libra_d2.modeling.bfp import BFP
h, w, sdpa, dev = {h}, {w}, {sdpa}, {dev!r}
torch.manual_seed(0)
device = torch.device(dev)
bfp = BFP(256, 5, 2, "non_local").to(device)
bfp.refine.use_sdpa = sdpa
torch.nn.init.normal_(bfp.refine.conv_out.weight, std=0.01)
def feats(h, w):
    return [torch.randn(1, 256, h * 4 // 2 ** i, w * 4 // 2 ** i, device=device, requires_grad=True) for i in range(5)]
small = feats(6, 10)
sum(o.sum() for o in bfp(small)).backward()  # warm-up: load kernels
xs = feats(h, w)
def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated() / 1024
else:
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS mark (VmHWM) to the current RSS
        f.write("5")
    before = status_kb("VmRSS")
sum(o.sum() for o in bfp(xs)).backward()
if device.type == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() / 1024
else:
    peak = status_kb("VmHWM")
print(json.dumps({{"peak_kb": peak - before}}))
"""


def bfp_peak_kb(h, w, sdpa, device):
    code = BFP_CHILD.format(root=ROOT, h=h, w=w, sdpa=sdpa, dev=device.type)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_kb"]


def bench_bfp_memory(device, reps, rounds):
    out = {}
    for sdpa, name in ((True, "sdpa"), (False, "matmul")):
        n = max(3, rounds // 2 + 1)
        small = statistics.median(bfp_peak_kb(50, 84, sdpa, device) for _ in range(n))
        large = statistics.median(bfp_peak_kb(100, 168, sdpa, device) for _ in range(n))
        out[f"bfp_peak_mb_50x84_{name}"] = small / 1024
        out[f"bfp_peak_mb_100x168_{name}"] = large / 1024
        growth = large / small
        out["bfp_mem_growth_4x_pixels" if sdpa else "bfp_mem_growth_4x_pixels_matmul"] = growth
    return out


def _export_bench_model(device):
    """The built-in Libra R-CNN (seeded random weights, eval mode) and one 192x256 input."""
    from detectron2.modeling import build_model

    from libra_d2.config import get_libra_cfg
    from libra_d2.export.exporters import example_image

    cfg = get_libra_cfg(os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"))
    cfg.MODEL.DEVICE = device.type
    torch.manual_seed(0)
    return build_model(cfg).eval(), example_image(cfg, (192, 256)).to(device)


def bench_export(device, reps, rounds):
    """Exported built-in Libra R-CNN (random weights, one 192x256 image, up to 100 detections)
    against the same model run eagerly through the export wrapper: TorchScript and, where
    onnxruntime is installed (CPU only), ONNX."""
    import tempfile

    from libra_d2.export import ExportableDetector, export_onnx, trace_detector

    model, x = _export_bench_model(device)
    eager = ExportableDetector(model)
    traced = trace_detector(model, x)
    out = {}

    def run(fn):
        with torch.no_grad():
            fn(x)

    for _ in range(3):  # warm-up (the TorchScript executor optimises on the first calls)
        run(eager)
        run(traced)
    ratio, tt, te, _ = paired_ratio(lambda: run(traced), lambda: run(eager), device, rounds, reps)
    out["export_torchscript_latency_ratio"] = ratio
    out["export_eager_ms"] = te * 1e3
    out["export_torchscript_ms"] = tt * 1e3
    try:
        import onnxruntime as ort
    except ImportError:
        return out
    if device.type != "cpu":
        return out
    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(model, x, os.path.join(d, "model.onnx"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        # onnxruntime's idle worker threads spin by default, which slows the eager call timed
        # right after each onnxruntime call: let them sleep
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy()}
        for _ in range(3):
            session.run(None, feed)
        ratio, to, te, _ = paired_ratio(lambda: session.run(None, feed), lambda: run(eager), device, rounds, reps)
    out["export_onnxruntime_latency_ratio"] = ratio
    out["export_onnxruntime_ms"] = to * 1e3
    out.update(_bench_program(model, x, eager, device, rounds, reps, aoti=False))
    return out


def _bench_program(model, x, eager, device, rounds, reps, aoti):
    """torch.export's ExportedProgram (``.module()``, the default format's artefact) or its
    AOTInductor package, against the eager wrapper on the same image."""
    import tempfile

    from libra_d2.export import compile_aoti, export_program

    program = export_program(model, x)
    if aoti:
        with tempfile.TemporaryDirectory() as d:
            fn = torch._inductor.aoti_load_package(compile_aoti(program, os.path.join(d, "model.pt2")))
    else:
        fn = program.module()
    key = "aoti" if aoti else "torch_export"

    def run(f):
        with torch.no_grad():
            f(x)

    for _ in range(3):
        run(fn)
        run(eager)
    ratio, tp, _, _ = paired_ratio(lambda: run(fn), lambda: run(eager), device, rounds, reps)
    return {f"export_{key}_latency_ratio": ratio, f"export_{key}_ms": tp * 1e3}


def bench_export_aoti(device, reps, rounds):
    """Opt-in (``--only export_aoti``: the AOTInductor compile takes ~15 minutes on 2 cores)."""
    from libra_d2.export import ExportableDetector

    model, x = _export_bench_model(device)
    return _bench_program(model, x, ExportableDetector(model), device, rounds, reps, aoti=True)


def bench_grouping(device, reps, rounds):
    """Padding in training batches of the mixed-aspect built-in data (libra_shapes_mixed_train:
    400 landscape 320x256 and 200 portrait 256x320 images), built-in recipe's resize (short side
    176/192/208, max 280), batch 4, padded to the FPN's size divisibility 32 as ImageList does:
    mean padded pixels per batch, and the padding's share of the batch tensor, with the
    exact-resume loader's aspect-ratio grouping on and off (2,000 batches each)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.transforms import ResizeShortestEdge

    import libra_d2  # noqa: F401  (registers the datasets)
    from libra_d2.data.samplers import PositionBatchSampler, aspect_groups

    dicts = DatasetCatalog.get("libra_shapes_mixed_train")
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, groups in (("grouped", aspect_groups(dicts)), ("ungrouped", None)):
        sampler = iter(PositionBatchSampler(len(dicts), 4, 0, groups=groups))
        pads, shares = [], []
        for _ in range(2000):
            sizes = []
            for _, i in next(sampler):
                short = int((176, 192, 208)[int(torch.randint(3, (1,), generator=g))])
                sizes.append(ResizeShortestEdge.get_output_shape(dicts[i]["height"], dicts[i]["width"], short, 280))
            hmax = -(-max(h for h, _ in sizes) // 32) * 32
            wmax = -(-max(w for _, w in sizes) // 32) * 32
            pad = sum(hmax * wmax - h * w for h, w in sizes)
            pads.append(pad)
            shares.append(pad / (len(sizes) * hmax * wmax))
        out[f"padded_px_per_batch_{name}"] = statistics.fmean(pads)
        out[f"padding_share_{name}"] = statistics.fmean(shares)
    out["padding_ratio_ungrouped_to_grouped"] = out["padded_px_per_batch_ungrouped"] / out["padded_px_per_batch_grouped"]
    return out


def load():
    """The machine's load when read: 1-minute load average and the runnable processes
    (``/proc/loadavg``'s fourth field counts this process too); None where unreadable."""
    try:
        with open("/proc/loadavg") as f:
            fields = f.read().split()
        return {"loadavg_1m": float(fields[0]), "runnable": int(fields[3].split("/")[0])}
    except (OSError, IndexError, ValueError):
        return None


def machine(device):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


SECTIONS = {"sampler": bench_sampler, "detector": bench_detector, "ohem": bench_ohem, "cpu_bf16": bench_cpu_bf16,
            "bfp_memory": bench_bfp_memory, "export": bench_export, "export_aoti": bench_export_aoti,
            "grouping": bench_grouping}


def write_json(path, results):
    """Write ``results`` atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def run_sections(names, device, args, results):
    """Run each section in turn, guarded: a section that raises is recorded under
    ``results["errors"][name]`` and the next one still runs; the json is rewritten after
    every section, so a run cut short keeps the figures it reached."""
    for name in names:
        t = time.time()
        if not args.quiet:
            print(f"[bench] {name} ...", flush=True)
        try:
            results.update(SECTIONS[name](device, args.reps, args.rounds))
            status = "done"
        except Exception as e:  # noqa: BLE001 - any failure of one section is recorded, not fatal
            results["errors"][name] = f"{type(e).__name__}: {e}"
            status = "failed"
        results.setdefault("section_seconds", {})[name] = round(time.time() - t, 1)
        write_json(args.output, results)
        if not args.quiet:
            print(f"[bench] {name} {status} in {time.time() - t:.0f} s", flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per side and round (sampler: 10x)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; a ratio is the median of the rounds' ratios")
    ap.add_argument("--only", default="sampler,detector,ohem,cpu_bf16,bfp_memory,export,grouping")
    ap.add_argument("--output", default=os.path.join(ROOT, "output/bench/results.json"))
    ap.add_argument("--short", type=int, default=512, help="detector pair: input short side (COCO scale: 800)")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [n for n in args.only.split(",") if n not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {unknown}; choose from {sorted(SECTIONS)}")
    device = torch.device(args.device)
    SHORT["value"] = args.short
    from dev.records.provenance import provenance

    results = {"machine": machine(device), "provenance": provenance(), "errors": {}, "load_before": load()}
    run_sections(args.only.split(","), device, args, results)
    results["load_after"] = load()
    write_json(args.output, results)
    if args.quiet:
        return results
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else ""))
    print(bench_table(results))
    print(f"\nwritten to {args.output}")
    return results


if __name__ == "__main__":
    main()
