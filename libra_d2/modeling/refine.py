"""The refinement step of the Balanced Feature Pyramid: the embedded-Gaussian non-local
block (default) and the 3x3 conv alternative. Input and output: [B, C, H, W]."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NonLocal2d", "ConvRefine"]


def _has_sdpa_scale() -> bool:
    import inspect

    fn = getattr(F, "scaled_dot_product_attention", None)
    if fn is None:
        return False
    try:
        return "scale" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: scale exists since torch 2.1
        return True


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block, ``C`` inter channels, no 1/sqrt(C) scaling.

    ``out = x + conv_out(softmax(theta(x)^T phi(x)) g(x))``, attention over all H*W
    positions. ``theta``, ``phi``, ``g``, ``conv_out`` are 1x1 convs with bias; theta/phi/g
    start as N(0, 0.01) and ``conv_out`` at zero, so the block starts as the identity.

    ``use_sdpa=True`` (default) computes the attention with
    ``F.scaled_dot_product_attention(scale=1.0)`` on contiguous [B, 1, HW, C] tensors so
    memory-efficient (flash) kernels are used where the device has them, on CPU too: memory
    stays linear in H*W. ``use_sdpa=False`` materialises the HW x HW matrix (for export or
    old torch). The attention is computed in float32 whatever the input dtype or autocast
    state (unscaled logits overflow float16), then cast back.
    """

    def __init__(self, channels: int, use_sdpa: bool = True):
        super().__init__()
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.conv_out = nn.Conv2d(channels, channels, 1)
        self.use_sdpa = use_sdpa and _has_sdpa_scale()
        for m in (self.theta, self.phi, self.g):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # [B, C, H, W] -> contiguous [B, 1, HW, C] (the layout the fused kernels need)
        q = self.theta(x).flatten(2).transpose(1, 2).contiguous()
        k = self.phi(x).flatten(2).transpose(1, 2).contiguous()
        v = self.g(x).flatten(2).transpose(1, 2).contiguous()
        out_dtype = v.dtype
        # The logits q.k are unscaled sums over C channels: with a trained FPN's activations
        # they can pass float16's largest value (65504). So the attention always runs in
        # float32, also under autocast / on half inputs, and the result is cast back.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            if self.use_sdpa:
                y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)
            else:
                y = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1).bmm(v)
        y = y.to(out_dtype).transpose(1, 2).reshape(b, c, h, w)
        return x + self.conv_out(y)


class ConvRefine(nn.Module):
    """3x3 conv (with bias) + ReLU, the "conv" refinement."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.kaiming_uniform_(self.conv.weight, a=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return F.relu(self.conv(x))
