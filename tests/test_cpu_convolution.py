"""The VAE loaded for CPU inference runs its 3-D convolutions on oneDNN, with the same result."""

from __future__ import annotations

import torch

from stages.checkpoint import Checkpoint


def kernels(vae: torch.nn.Module, latent: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    with torch.no_grad(), torch.profiler.profile() as profile:
        video = vae.decode(latent).sample
    return video, {event.key for event in profile.key_averages() if "conv" in event.key}


def test_the_vae_decodes_on_onednn_as_the_native_kernel_does(settings):
    checkpoint = Checkpoint.from_settings(settings)
    latent = torch.randn(1, *checkpoint.latent_shape(17, 64, 64)[1:], generator=torch.Generator().manual_seed(0))
    served, served_kernels = kernels(checkpoint.vae(), latent)
    native, native_kernels = kernels(checkpoint._load("vae", checkpoint.vae_dtype), latent)  # as diffusers loads it

    # every decode-time conv3d input is under PyTorch's 20,480 threshold at this size
    assert "aten::slow_conv3d_forward" in native_kernels
    assert "aten::slow_conv3d_forward" not in served_kernels and "aten::mkldnn_convolution" in served_kernels
    assert served.shape == native.shape == (1, 3, 17, 64, 64)
    assert (served - native).abs().max() < 1e-5  # float rounding: the kernels sum in another order


def test_training_keeps_the_native_kernel_and_its_gradients(settings):
    checkpoint = Checkpoint.from_settings(settings)
    vae = checkpoint.vae().requires_grad_(True)
    latent = torch.randn(1, *checkpoint.latent_shape(5, 32, 32)[1:])
    vae.decode(latent).sample.mean().backward()
    assert all(p.grad is not None for p in vae.decoder.parameters() if p.requires_grad)
