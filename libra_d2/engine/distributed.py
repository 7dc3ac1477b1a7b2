"""DDP wrapping for both config systems, on GPUs and on CPUs."""
import contextlib

import detectron2.engine.defaults as d2_defaults
from detectron2.utils import comm

__all__ = ["create_ddp_model", "ddp_for_cpu_models"]

_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model`` (no wrap in a single process; ``kwargs`` go to DDP,
    ``fp16_compression`` included), except that a CPU model is wrapped without
    ``device_ids``: detectron2 passes ``[local_rank]`` whatever the device, which DDP
    rejects for CPU modules (gloo training on several CPU processes)."""
    params = list(model.parameters())
    if comm.get_world_size() > 1 and "device_ids" not in kwargs and params and params[0].device.type == "cpu":
        kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, **kwargs)


@contextlib.contextmanager
def ddp_for_cpu_models():
    """While active, ``DefaultTrainer.__init__`` wraps its model with :func:`create_ddp_model`
    (it calls detectron2's module-level function, so the yacs path swaps it for the time of
    the call)."""
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original
