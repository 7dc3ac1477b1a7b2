"""Mixed precision: the Libra models under torch.autocast, and BFP's non-local block in float16.

detectron2's AMPTrainer asserts CUDA, so on CPU the same autocast region it opens is tested
directly (bfloat16 is CPU autocast's dtype); float16 arithmetic is tested on half tensors.
"""
import numpy as np
import pytest
import torch

from libra_d2.modeling.refine import NonLocal2d


def _trained_like(c=256, hw=(25, 38), act_scale=1.0, w_std=0.05, seed=0):
    """A non-local block and a refine-level input with magnitudes like a trained FPN's:
    per-element std of a few units with sparse strong peaks, and learned theta/phi weights
    (std 0.05 instead of the N(0, 0.01) initialisation)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, *hw, generator=g) * 3.0
    peaks = torch.rand(1, c, *hw, generator=g) < 0.01
    x = (x + peaks * 40.0) * act_scale
    m = NonLocal2d(c)
    with torch.no_grad():
        for conv in (m.theta, m.phi, m.g, m.conv_out):
            conv.weight.normal_(0, w_std, generator=g)
    return m, x


def _naive_half_logits(m, x):
    q = m.theta(x).flatten(2).transpose(1, 2)
    k = m.phi(x).flatten(2).transpose(1, 2)
    return torch.bmm(q, k.transpose(1, 2))


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("act_scale", [1.0, 2.0, 4.0, 8.0])
def test_non_local_finite_in_float16_at_trained_magnitudes(use_sdpa, act_scale):
    m, x = _trained_like(act_scale=act_scale)
    m.use_sdpa = use_sdpa and m.use_sdpa
    with torch.no_grad():
        ref = m(x.double().float())  # float32 reference
        mh = m.half()
        out = mh(x.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    # float16 rounding of q and k (relative ~5e-4) shifts logits in proportion to their size,
    # so the error grows with the activations (0.5% at scale 1, 4% at scale 4 here)
    rel = float((out.float() - ref).norm() / ref.norm())
    assert rel < 0.01 * act_scale + 0.005, rel


def test_unscaled_logits_can_overflow_float16():
    """Why the block computes its attention in float32: the margin is small. At 1x the
    largest logit is ~1.9e3, at 4x ~3e4, and at 8x these activations (peaks of ~300, which
    un-normalised FPN outputs do reach) the logits pass float16's range: a half-precision
    matmul path gives inf."""
    m, x = _trained_like(act_scale=8.0)
    with torch.no_grad():
        logits32 = _naive_half_logits(m, x)
        logits16 = _naive_half_logits(m.half(), x.half())
    assert float(logits32.abs().max()) > 65504
    assert not torch.isfinite(logits16).all()


def test_non_local_under_autocast_keeps_float32_attention():
    m, x = _trained_like()
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert torch.isfinite(out).all()
    # bfloat16 keeps 8 significant bits: q and k rounded to ~4e-3 move large logits visibly
    assert float((out.float() - ref).norm() / ref.norm()) < 0.1


def _batch(cfg, n=2):
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    return [mapper(d) for d in DatasetCatalog.get("libra_shapes_train")[:8] if d["annotations"]][:n]


@pytest.mark.parametrize("config", ["builtin/libra_rcnn_R_18_FPN_cpu.yaml", "builtin/libra_retinanet_R_18_FPN_cpu.yaml"])
def test_libra_model_bfloat16_autocast_close_to_float32(libra_cfg, shapes_root, config):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from tests.conftest import TINY

    cfg = libra_cfg(config, *TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = _batch(cfg)

    def losses(amp):
        torch.manual_seed(1)  # same proposal/anchor sampling in both runs
        model.zero_grad()
        with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(batch)
        total = sum(out.values())
        total.backward()  # outside autocast, as AMPTrainer does
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return {k: float(v) for k, v in out.items()}, grads

    l32, g32 = losses(False)
    l16, g16 = losses(True)
    assert all(np.isfinite(v) for v in l16.values()), l16
    assert torch.isfinite(g16).all()
    for k in l32:
        assert abs(l16[k] - l32[k]) <= 0.05 * abs(l32[k]) + 0.02, (k, l16[k], l32[k])
    cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    assert cos > 0.9, cos


# ---------------------------------------------------------------- SOLVER.AMP.ENABLED on CPU
def _train_amp(libra_cfg, tmp_path, monkeypatch, native, caplog):
    """Two iterations of the built-in Libra R-CNN with SOLVER.AMP.ENABLED through LibraTrainer;
    returns the trainer and the dtypes of the first convolution's outputs in training."""
    import logging

    from libra_d2.engine import LibraTrainer
    from tests.conftest import TINY

    monkeypatch.setenv("LIBRA_CPU_BF16", "1" if native else "0")  # simulate the processor's capability
    cfg = libra_cfg("builtin/libra_rcnn_R_18_FPN_cpu.yaml", *TINY, "SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", 2,
                    "OUTPUT_DIR", str(tmp_path))
    cfg.DATASETS.TEST = ()
    with caplog.at_level(logging.INFO, logger="libra_d2.engine.cpu_amp"):
        trainer = LibraTrainer(cfg)
    dtypes = []
    conv = trainer.model.backbone.bottom_up.stem.conv1
    handle = conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
    trainer.train()
    handle.remove()
    return trainer, dtypes


def test_cpu_amp_trains_under_bfloat16_where_native(libra_cfg, shapes_root, tmp_path, monkeypatch, caplog):
    from libra_d2.engine.cpu_amp import CPUAutocastTrainer

    trainer, dtypes = _train_amp(libra_cfg, tmp_path, monkeypatch, True, caplog)
    assert isinstance(trainer._trainer, CPUAutocastTrainer) and trainer._trainer.autocast
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the convolutions ran in bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay float32
    losses = trainer.storage.latest()
    assert np.isfinite(losses["total_loss"][0]) and trainer.iter == 2
    assert "bfloat16 autocast" in caplog.text


def test_cpu_amp_without_native_bfloat16_trains_in_float32_and_says_so(libra_cfg, shapes_root, tmp_path, monkeypatch,
                                                                       caplog):
    trainer, dtypes = _train_amp(libra_cfg, tmp_path, monkeypatch, False, caplog)
    assert not trainer._trainer.autocast
    assert dtypes == [torch.float32, torch.float32]
    assert "no native bfloat16" in caplog.text and "amx_bf16" in caplog.text
    assert np.isfinite(trainer.storage.latest()["total_loss"][0])


def test_native_bfloat16_detection_reads_the_cpu_flags(monkeypatch):
    from libra_d2.engine import cpu_amp

    monkeypatch.delenv("LIBRA_CPU_BF16", raising=False)
    monkeypatch.setattr(cpu_amp, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not cpu_amp.cpu_bf16_native()
    monkeypatch.setattr(cpu_amp, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert cpu_amp.cpu_bf16_native()
    monkeypatch.setattr(cpu_amp, "cpu_flags", lambda: frozenset({"amx_tile", "amx_bf16"}))
    assert cpu_amp.cpu_bf16_native()


def test_demo_trains_in_bfloat16_only_on_a_native_cpu_unless_told(monkeypatch):
    """make demo's choice (native_bf16_opts): AMP on for a CPU run on a processor with native
    bfloat16; nothing added without it, on an accelerator, or where the options already set
    SOLVER.AMP.ENABLED (the user's choice stands)."""
    from libra_d2.engine.cpu_amp import native_bf16_opts

    on = ["SOLVER.AMP.ENABLED", "True"]
    monkeypatch.setenv("LIBRA_CPU_BF16", "1")
    assert native_bf16_opts([], "cpu") == on
    assert native_bf16_opts(["SOLVER.FUSED_OPTIMIZER", "True"], "cpu") == on
    assert native_bf16_opts([], "cuda") == []
    assert native_bf16_opts(["MODEL.DEVICE", "cuda"], "cpu") == []
    assert native_bf16_opts(["MODEL.DEVICE", "cuda", "MODEL.DEVICE", "cpu"], "cuda") == on
    assert native_bf16_opts(["SOLVER.AMP.ENABLED", "False"], "cpu") == []
    monkeypatch.setenv("LIBRA_CPU_BF16", "0")
    assert native_bf16_opts([], "cpu") == []


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, data):
        return {"loss": (self.w * data).sum()}


def _amp_trainer(**kwargs):
    from detectron2.engine import AMPTrainer

    from libra_d2.engine.cpu_amp import cpu_autocast_trainer

    model = _Toy()
    data = iter([torch.ones(3)] * 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return cpu_autocast_trainer(AMPTrainer(model, data, opt, **kwargs))


def test_cpu_amp_step_runs_the_hooks_after_backward_with_the_gradients():
    """AMPTrainer's step contract under CPU autocast: where detectron2's trainer has
    ``after_backward`` (main), every hook's runs between backward and the optimizer step."""
    from detectron2.engine import HookBase
    from detectron2.utils.events import EventStorage

    trainer = _amp_trainer()
    if not hasattr(trainer, "after_backward"):
        pytest.skip("this detectron2's trainer has no after_backward hooks (0.6)")
    seen = []

    class Probe(HookBase):
        def after_backward(self):
            seen.append(self.trainer.model.w.grad.clone())

    trainer.register_hooks([Probe()])
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
    assert len(seen) == 1 and torch.equal(seen[0], torch.ones(3))
    assert torch.allclose(trainer.model.w.detach(), torch.full((3,), 0.9))  # then the step


def test_cpu_amp_step_zeroes_gradients_before_the_forward_when_asked():
    import inspect

    from detectron2.engine import AMPTrainer
    from detectron2.utils.events import EventStorage

    if "zero_grad_before_forward" not in inspect.signature(AMPTrainer.__init__).parameters:
        pytest.skip("this detectron2's AMPTrainer has no zero_grad_before_forward (0.6)")
    calls = []
    trainer = _amp_trainer(zero_grad_before_forward=True)
    forward = trainer.model.forward

    def spy(data):
        calls.append(("forward", trainer.model.w.grad is None or bool((trainer.model.w.grad == 0).all())))
        return forward(data)

    trainer.model.forward = spy
    trainer.model.w.grad = torch.full((3,), 5.0)  # stale gradients from elsewhere
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
    assert calls == [("forward", True)]  # zeroed before the forward pass
