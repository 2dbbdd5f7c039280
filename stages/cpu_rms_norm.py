"""Wan's VAE RMS norm without `F.normalize` on CPU.

diffusers' `WanRMS_norm` normalises over the channels of a channels-first video (`F.normalize(x,
dim=1)`): on a CPU that strided vector norm took half of a `final` decode's CPU time in a
profile here (0.65 of 1.30 s). The same value as x * rsqrt(sum of squares over the channels) is
5x faster on a decoder's 16 x 2 x 130 x 130 activation (13.3 against 2.5 ms, one thread) and
agrees to float rounding (~1e-7). `use_rsqrt_rms_norm` swaps the forward of a model's
channels-first float32 norms for CPU inference; elsewhere (GPU, half precision, autograd) each runs
as before.
"""

from __future__ import annotations

import torch

_EPS_SQUARED = 1e-24  # F.normalize divides by max(norm, 1e-12)


def use_rsqrt_rms_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Route `model`'s channels-first `WanRMS_norm` layers through `_rsqrt_forward`; returns `model`."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    for norm in model.modules():
        if isinstance(norm, WanRMS_norm) and norm.channel_first:
            norm.forward = _rsqrt_forward(norm)
    return model


def _rsqrt_forward(norm: torch.nn.Module):
    native = type(norm).forward.__get__(norm)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or (torch.is_grad_enabled() and norm.gamma.requires_grad):
            return native(x)
        inverse = torch.rsqrt((x * x).sum(1, keepdim=True).clamp_min(_EPS_SQUARED))
        return x * inverse * norm.scale * norm.gamma + norm.bias

    return forward
