"""Multi-process training through detectron2's own launch() (DDP), on CPU with gloo."""
import os

import pytest
import torch

from libra_d2.utils.env import launch_supports_cpu
from tests.conftest import ROOT, TINY, run_train_net

CONFIG = os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml")
# With these settings one process with 2 images per batch and two processes with 1 image each
# compute the same gradients, so the weights must agree up to float summation order:
# * every anchor and every proposal is sampled (batch sizes above their counts, no RPN
#   negative cap), so no random draw depends on the process layout;
# * exactly 50 proposals per image and no ground truth appended, so the per-process loss
#   normalisers (sampled proposals, BATCH_SIZE_PER_IMAGE x images) average to the
#   single-process ones under DDP's gradient mean;
# * GroupNorm (per image) instead of BatchNorm (per process batch), and every image has the
#   same size, so padding is the same;
# * the position-addressed loader gives rank r of batch k the image that position 2k + r
#   has in the single-process run, with the same flip.
SAME_GRADIENTS = [
    "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "10000000", "MODEL.LIBRA.RPN_NEG_POS_UB", "-1.0",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "10000000", "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.WARMUP_ITERS", "0",  # full LR at once: the weights move visibly
    # SGD: an update proportional to the gradient, so float summation order stays at rounding
    # size (AdamW divides by the gradient's running magnitude, which turns the rounding noise
    # of near-zero gradient entries into updates of the learning rate's size)
    "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.02",
]


@pytest.mark.slow
@pytest.mark.skipif(
    not launch_supports_cpu(),
    reason="detectron2 0.6's launch() hard-codes the NCCL backend, so it cannot start several CPU processes; "
    "multi-process CPU training needs detectron2 main (see test_several_cpu_processes_on_0_6_fail_clearly)",
)
def test_two_processes_match_one_process_with_the_same_total_batch(shapes_root, tmp_path):
    two, one = str(tmp_path / "ddp"), str(tmp_path / "single")
    run_train_net(shapes_root, "--config-file", CONFIG, "--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:29517",
                  *TINY, *SAME_GRADIENTS, "OUTPUT_DIR", two)
    run_train_net(shapes_root, "--config-file", CONFIG, *TINY, *SAME_GRADIENTS, "OUTPUT_DIR", one)
    a = torch.load(os.path.join(two, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    b = torch.load(os.path.join(one, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    init = initial_weights(shapes_root)
    assert set(a) == set(b)
    keys = [k for k in a if torch.is_floating_point(a[k]) and k in init]
    step_a = torch.cat([(a[k] - init[k]).flatten() for k in keys])
    step_b = torch.cat([(b[k] - init[k]).flatten() for k in keys])
    # the weights moved (so the comparison means something) and moved the same way: the two
    # updates differ by float summation order only
    assert float(step_b.norm()) > 1e-3 * float(torch.cat([init[k].flatten() for k in keys]).norm())
    assert float((step_a - step_b).norm()) < 1e-2 * float(step_b.norm()), float((step_a - step_b).norm() / step_b.norm())


def initial_weights(shapes_root):
    """The weights the trainer starts from: detectron2's default_setup seeds every RNG with SEED
    (+ rank; DDP then broadcasts rank 0's), and building the model is the first draw."""
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg(CONFIG, TINY + SAME_GRADIENTS)
    seed_all_rng(cfg.SEED)
    return build_model(cfg).state_dict()


@pytest.mark.skipif(launch_supports_cpu(), reason="this detectron2's launch() can start CPU processes (gloo)")
def test_several_cpu_processes_on_0_6_fail_clearly(shapes_root, tmp_path):
    proc = run_train_net(shapes_root, "--config-file", CONFIG, "--num-gpus", "2", *TINY, "SOLVER.MAX_ITER", "2",
                         "OUTPUT_DIR", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "--num-gpus 2" in last and "NCCL" in last and "gloo" in last
