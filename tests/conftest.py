"""Fixtures and helpers shared by the test modules (no test module imports another)."""
import os
import subprocess
import sys

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# `make test` runs two pytest-xdist workers: each (and each process it starts) gets an equal
# share of the cores, so the two never oversubscribe them; alone, up to 2 threads
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def libra_cfg():
    """Factory: a detectron2 config with libra keys merged from a file under configs/."""
    from libra_d2.config import get_libra_cfg

    def make(path=None, *opts):
        cfg = get_libra_cfg(os.path.join(ROOT, "configs", path) if path else None, opts)
        cfg.MODEL.DEVICE = "cpu"
        return cfg

    return make


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A generated libra_shapes dataset shared by the session (generated once, ~10 s)."""
    from libra_d2.data import ensure_generated, register_libra_shapes

    root = str(tmp_path_factory.mktemp("datasets"))
    ensure_generated(root, progress=False)
    register_libra_shapes(root)
    return root


# ---------------------------------------------------------------- train_net.py runs
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(192,)", "INPUT.MAX_SIZE_TRAIN", "320", "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "320",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "('libra_shapes_val_mini',)",
    "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "()",
]


def run_train_net(shapes_root, *args, check=True):
    env = dict(os.environ, DETECTRON2_DATASETS=shapes_root, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_net.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc



# ---------------------------------------------------------------- small ROI heads
def small_heads(libra_cfg, *opts):
    cfg = libra_cfg(
        "Base-Libra-RCNN-FPN.yaml",
        "MODEL.ROI_HEADS.NUM_CLASSES", 4,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
        *opts,
    )
    shapes = {f"p{i}": ShapeSpec(channels=16, stride=2 ** i) for i in range(2, 7)}
    return cfg, build_roi_heads(cfg, shapes)


def inputs(h=128, w=160, num_props=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {f"p{i}": torch.rand(2, 16, h // 2 ** i, w // 2 ** i, generator=g) for i in range(2, 7)}
    images = ImageList(torch.zeros(2, 3, h, w), [(h, w), (h, w)])
    gt = Instances((h, w), gt_boxes=Boxes(torch.tensor([[10.0, 10, 60, 70], [70, 40, 150, 120]])), gt_classes=torch.tensor([1, 3]))
    empty = Instances((h, w), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    props = []
    for _ in range(2):
        xy = torch.rand(num_props, 2, generator=g) * torch.tensor([w - 20.0, h - 20.0])
        wh = 8 + torch.rand(num_props, 2, generator=g) * 60
        boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w - 1.0, h - 1.0]))], 1)
        props.append(Instances((h, w), proposal_boxes=Boxes(boxes), objectness_logits=torch.rand(num_props, generator=g)))
    return images, features, props, [gt, empty]


def neg_ious(libra_cfg, neg_sampler, seed, method="auto", *opts):
    cfg, heads = small_heads(libra_cfg, "MODEL.LIBRA.NEG_SAMPLER", neg_sampler, "MODEL.LIBRA.POS_SAMPLER", "random", *opts)
    heads.sampler_method = method
    heads.train()
    # one image: 1000 proposals far from the object (IoU 0) and 100 around it (low IoU)
    h, w = 256, 256
    gt = Instances((h, w), gt_boxes=Boxes(torch.tensor([[100.0, 100, 160, 160]])), gt_classes=torch.tensor([2]))
    far = torch.tensor([[0.0, 0, 40, 40]]).repeat(1000, 1)
    g = torch.Generator().manual_seed(seed)
    shift = torch.rand(100, 1, generator=g) * 60 - 30
    near = torch.tensor([[100.0, 100, 160, 160]]) + torch.cat([shift, shift, shift, shift], 1) * torch.tensor([1.0, 1, 1, 1])
    near[:, 2:] += 25  # grow, so IoU stays below 0.5 for most
    boxes = torch.cat([far, near])
    props = [Instances((h, w), proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(len(boxes)))]
    torch.manual_seed(seed)
    with EventStorage():
        sampled = heads.label_and_sample_proposals(props, [gt])[0]
    from detectron2.structures import pairwise_iou

    neg = sampled.gt_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return pairwise_iou(gt.gt_boxes, sampled.proposal_boxes[neg]).max(0).values
