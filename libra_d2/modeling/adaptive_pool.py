"""Adaptive max pooling from gathers, for export with dynamic sizes (torch's adaptive pooling
specialises an exported graph to the traced output size). Used by
:class:`~libra_d2.modeling.bfp.BFP` only while ``torch.onnx`` or ``torch.export`` is exporting."""
import torch

__all__ = ["adaptive_max_pool2d_gather", "onnx_exporting"]


def _adaptive_max_1d(x: torch.Tensor, out_len, dim: int, max_window: int) -> torch.Tensor:
    """``adaptive_max_pool`` along ``dim`` written with gathers: output ``i`` is the max of
    input positions ``[floor(i*L/n), ceil((i+1)*L/n))`` (L = input, n = output length), as in
    ``F.adaptive_max_pool2d``. Each window is read through ``max_window`` clamped indices, so
    it must hold at most that many positions (true when L <= (max_window - 1) * n)."""
    in_len = x.shape[dim]
    i = torch.arange(out_len, device=x.device)
    start = torch.div(i * in_len, out_len, rounding_mode="floor")
    end = torch.div((i + 1) * in_len + out_len - 1, out_len, rounding_mode="floor")
    out = None
    for k in range(max_window):
        idx = torch.minimum(start + k, end - 1)
        v = x.index_select(dim, idx)
        out = v if out is None else torch.maximum(out, v)
    return out


def adaptive_max_pool2d_gather(x: torch.Tensor, size, max_ratio: int) -> torch.Tensor:
    """Same values as ``F.adaptive_max_pool2d(x, size)`` for outputs at most ``max_ratio``
    times smaller than the input per side, from ops the ONNX exporter accepts with dynamic
    sizes (its adaptive pooling needs a constant output size). Separable: rows, then columns."""
    x = _adaptive_max_1d(x, size[0], x.dim() - 2, max_ratio + 1)
    return _adaptive_max_1d(x, size[1], x.dim() - 1, max_ratio + 1)


def onnx_exporting() -> bool:
    fn = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(fn()) if fn is not None else False
