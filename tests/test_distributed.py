"""Multi-process training through detectron2's own launch() (DDP), on CPU with gloo."""
import inspect
import os

import pytest

from tests.test_end_to_end import ROOT, TINY, run_train_net


def launch_supports_cpu():
    from detectron2.engine import launch as launch_mod

    src = inspect.getsource(inspect.getmodule(launch_mod))
    return "gloo" in src.lower()


@pytest.mark.slow
@pytest.mark.skipif(
    not launch_supports_cpu(),
    reason="detectron2 0.6's launch() hard-codes the NCCL backend, so it cannot start several CPU processes; "
    "multi-process CPU training needs detectron2 main",
)
def test_two_processes_train(shapes_root, tmp_path):
    out = str(tmp_path / "ddp")
    run_train_net(shapes_root, "--config-file", os.path.join(ROOT, "configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml"), "--num-gpus", "2",
                  "--dist-url", "tcp://127.0.0.1:29517", *TINY, "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()", "OUTPUT_DIR", out)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
