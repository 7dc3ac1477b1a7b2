import pytest
import torch
import torch.nn.functional as F

from libra_d2.modeling.bfp import BFP

SIZES = [(37, 45), (19, 23), (10, 12), (5, 6), (3, 3)]


def feats(c=8, b=2, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h, w, generator=g, requires_grad=requires_grad) for h, w in SIZES]


def expected_none(xs, r):
    """The BFP semantics (docs/semantics.md) written out directly: gather to level r, average, scatter, add."""
    size = xs[r].shape[-2:]
    gathered = [F.adaptive_max_pool2d(x, size) if i < r else F.interpolate(x, size=size, mode="nearest") for i, x in enumerate(xs)]
    avg = torch.stack(gathered).mean(0)
    outs = []
    for i, x in enumerate(xs):
        res = F.interpolate(avg, size=x.shape[-2:], mode="nearest") if i < r else F.adaptive_max_pool2d(avg, x.shape[-2:])
        outs.append(x + res)
    return outs


@pytest.mark.parametrize("refine_type", ["non_local", "conv", "none"])
@pytest.mark.parametrize("r", [0, 2, 4])
def test_shapes(refine_type, r):
    xs = feats()
    outs = BFP(8, 5, r, refine_type)(xs)
    assert [o.shape for o in outs] == [x.shape for x in xs]


@pytest.mark.parametrize("r", [0, 1, 2, 4])
def test_zero_conv_out_equals_input_plus_resized_average(r):
    xs = feats()
    bfp = BFP(8, 5, r, "non_local")
    assert float(bfp.refine.conv_out.weight.abs().sum()) == 0.0  # reference initialisation
    for o, e in zip(bfp(xs), expected_none(xs, r)):
        torch.testing.assert_close(o, e)
    for o, e in zip(BFP(8, 5, r, "none")(xs), expected_none(xs, r)):
        torch.testing.assert_close(o, e)


def test_sdpa_path_matches_plain_matmul():
    torch.manual_seed(0)
    bfp = BFP(8, 5, 2, "non_local")
    for m in bfp.refine.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.3)
    xs = feats()
    bfp.refine.use_sdpa = True
    a = bfp(xs)
    bfp.refine.use_sdpa = False
    b = bfp(xs)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_level_and_refine_params():
    xs = feats(requires_grad=True)
    bfp = BFP(8, 5, 2, "non_local")
    torch.nn.init.normal_(bfp.refine.conv_out.weight, std=0.1)
    sum(o.square().sum() for o in bfp(xs)).backward()
    for x in xs:
        assert x.grad is not None and float(x.grad.abs().sum()) > 0
    for name in ("theta", "phi", "g", "conv_out"):
        assert float(getattr(bfp.refine, name).weight.grad.abs().sum()) > 0, name


def test_reference_child_names():
    names = {n for n, _ in BFP(8, 5, 2, "non_local").named_parameters()}
    assert {f"refine.{c}.weight" for c in ("theta", "phi", "g", "conv_out")} <= names
    assert "refine.conv.weight" in {n for n, _ in BFP(8, 5, 2, "conv").named_parameters()}


def test_bad_arguments():
    with pytest.raises(ValueError, match="refine_level"):
        BFP(8, 5, 5)
    with pytest.raises(ValueError, match="refine_type"):
        BFP(8, 5, 2, "attention")


def test_gather_form_of_adaptive_max_pool_equals_torch():
    """BFP's ONNX-exportable pooling gives F.adaptive_max_pool2d's values for every ratio up
    to the bound, exact and ceil (odd) sizes alike."""
    from libra_d2.modeling.adaptive_pool import adaptive_max_pool2d_gather

    g = torch.Generator().manual_seed(0)
    checked = 0
    for ratio in (2, 4, 8):
        for h_out in range(1, 7):
            for h_in in range(h_out, ratio * h_out + 1):
                w_out = h_out + 1
                w_in = min(ratio * w_out, h_in + 2)
                x = torch.randn(2, 3, h_in, w_in, generator=g)
                torch.testing.assert_close(adaptive_max_pool2d_gather(x, (h_out, w_out), ratio),
                                           F.adaptive_max_pool2d(x, (h_out, w_out)), rtol=0, atol=0)
                checked += 1
    assert checked > 100
    # beyond the bound the windows are too long for the gathers: the values differ
    x = torch.arange(12.0).view(1, 1, 1, 12)
    assert not torch.equal(adaptive_max_pool2d_gather(x, (1, 2), 2), F.adaptive_max_pool2d(x, (1, 2)))
