"""3-D convolutions through oneDNN on CPU.

PyTorch's CPU dispatch sends a float32 conv3d to its native (im2col) kernel unless the input's
N x C x D x H exceeds 20,480, a threshold tuned for 2-D convolutions. Wan's VAE runs its causal
convolutions one latent frame at a time, so at the default model's sizes every one of them falls
under it, and the native kernel is 3-6x slower than oneDNN's on the same input (a 33-frame 128x128
decode: 6.7 -> 2.1 s on 2 threads here). `use_onednn_conv3d` sends a model's Conv3d layers to
`torch.mkldnn_convolution`, the kernel PyTorch itself picks for larger inputs; results agree to
float rounding (~2e-6 on the decoded pixels). Elsewhere (GPU, other dtypes, autograd) the layer
runs as before.
"""

from __future__ import annotations

import torch


def use_onednn_conv3d(model: torch.nn.Module) -> torch.nn.Module:
    """Route `model`'s zero-padded Conv3d layers to oneDNN for float32 CPU inference; returns `model`."""
    if not torch.backends.mkldnn.is_available():
        return model
    for conv in model.modules():
        # (a string padding, "same" or "valid", stays with PyTorch's own resolution of it)
        if isinstance(conv, torch.nn.Conv3d) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
            conv._conv_forward = _onednn_forward(conv)
    return model


def _onednn_forward(conv: torch.nn.Conv3d):
    native = conv._conv_forward

    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or (torch.is_grad_enabled() and weight.requires_grad):
            return native(x, weight, bias)
        return torch.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)

    return forward
