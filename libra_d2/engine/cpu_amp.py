"""Mixed precision on CPU: ``SOLVER.AMP.ENABLED`` (yacs) / ``train.amp.enabled`` (lazy)
trains under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

detectron2's ``AMPTrainer`` asserts CUDA in every step. On a CPU model libra-d2 runs the
same step under CPU autocast instead: bfloat16 for the convolutions and matrix products
autocast lists, float32 parameters, gradients and optimizer state. bfloat16 has float32's
exponent range, so no gradient scaler is used (the ``grad_scaler`` entry of a checkpoint is
kept, disabled). The BFP non-local attention and the box / Balanced L1 losses compute in
float32 inside the autocast region (``refine.NonLocal2d``, ``losses.balanced_l1_loss``).

Only processors with native bfloat16 arithmetic (the ``amx_bf16`` or ``avx512_bf16`` CPU
flags) gain speed from it; elsewhere torch emulates bfloat16 and an iteration gets slower.
There libra-d2 trains in float32 and logs one warning that names the missing flags (the run
is then the float32 run: same config, no error, no slow emulation).
"""
import logging
import os
import time

import torch
from detectron2.engine import AMPTrainer

from ..utils.machine import cpu_flags

__all__ = ["cpu_bf16_native", "CPUAutocastTrainer", "cpu_autocast_trainer", "native_bf16_opts"]

logger = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_native() -> bool:
    """True when this processor does bfloat16 arithmetic natively (``amx_bf16`` or
    ``avx512_bf16`` among its flags; on systems without /proc/cpuinfo, torch's own check).
    ``LIBRA_CPU_BF16=0`` / ``1`` overrides the detection."""
    forced = os.environ.get("LIBRA_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in NATIVE_BF16_FLAGS)
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


class CPUAutocastTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` step on CPU: the forward pass and the loss sum under
    bfloat16 autocast (``autocast=True``) or in float32 (``autocast=False``), then an ordinary
    backward and optimizer step. The step keeps AMPTrainer's contract on each detectron2
    version: ``zero_grad_before_forward``, the hooks' ``after_backward`` and
    ``async_write_metrics`` where the version has them; same metrics and checkpoint contents."""

    autocast = True

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        zero_first = getattr(self, "zero_grad_before_forward", False)
        if zero_first:
            self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not zero_first:
            self.optimizer.zero_grad()
        losses.backward()
        if hasattr(self, "after_backward"):  # detectron2 main: the hooks' after_backward
            self.after_backward()
        if getattr(self, "async_write_metrics", False):
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def _model_device(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def cpu_autocast_trainer(trainer):
    """Turn detectron2's ``AMPTrainer`` of a CPU model into a :class:`CPUAutocastTrainer` in
    place (its loader iterator, optimizer and grad scaler are kept: nothing is rebuilt), with
    bfloat16 autocast where the processor has native bfloat16 and float32 elsewhere. Any
    other trainer, or a model on an accelerator, is returned unchanged."""
    if not isinstance(trainer, AMPTrainer) or _model_device(trainer.model).type != "cpu":
        return trainer
    trainer.__class__ = CPUAutocastTrainer
    trainer.autocast = cpu_bf16_native()
    if trainer.autocast:
        logger.info("AMP on CPU: training under bfloat16 autocast (native bfloat16 on this processor)")
    else:
        logger.warning("AMP on CPU: this processor has no native bfloat16 (none of the CPU flags %s), where "
                       "bfloat16 is emulated and slower than float32; training in float32",
                       ", ".join(NATIVE_BF16_FLAGS))
    return trainer


def native_bf16_opts(opts, device: str = "cpu"):
    """Config options (``KEY VALUE`` list) that train a run in CPU bfloat16 where that is
    faster: ``["SOLVER.AMP.ENABLED", "True"]`` when the run is on CPU (``MODEL.DEVICE`` in
    ``opts``, else ``device``), the processor has native bfloat16 and ``opts`` leave
    ``SOLVER.AMP.ENABLED`` alone; otherwise ``[]``. ``make demo`` uses it."""
    pairs = list(zip(opts[0::2], opts[1::2]))
    if any(k == "SOLVER.AMP.ENABLED" for k, _ in pairs):
        return []
    for key, value in pairs:  # the last MODEL.DEVICE wins, as in merge_from_list
        if key == "MODEL.DEVICE":
            device = value
    if not str(device).startswith("cpu") or not cpu_bf16_native():
        return []
    return ["SOLVER.AMP.ENABLED", "True"]
