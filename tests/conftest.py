import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def libra_cfg():
    """Factory: a detectron2 config with libra keys merged from a file under configs/."""
    from detectron2.config import get_cfg

    import libra_d2

    def make(path=None, *opts):
        cfg = get_cfg()
        libra_d2.add_libra_config(cfg)
        if path:
            cfg.merge_from_file(os.path.join(ROOT, "configs", path))
        cfg.merge_from_list(list(opts))
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
