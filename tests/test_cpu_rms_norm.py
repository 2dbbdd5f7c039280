"""The VAE loaded for CPU inference normalises its channels without `F.normalize`, to the same result."""

from __future__ import annotations

import torch

from stages.checkpoint import Checkpoint
from tests.test_cpu_convolution import kernels


def norms(vae: torch.nn.Module, latent: torch.Tensor) -> set[str]:
    with torch.no_grad(), torch.profiler.profile() as profile:
        vae.decode(latent)
    return {event.key for event in profile.key_averages() if "norm" in event.key}


def test_the_vae_normalises_with_rsqrt_as_f_normalize_does(settings):
    checkpoint = Checkpoint.from_settings(settings)
    latent = torch.randn(1, *checkpoint.latent_shape(17, 64, 64)[1:], generator=torch.Generator().manual_seed(0))
    served_vae = checkpoint.vae()
    native_vae = checkpoint._load("vae", checkpoint.vae_dtype)  # as diffusers loads it
    assert "aten::linalg_vector_norm" in norms(native_vae, latent)
    assert "aten::linalg_vector_norm" not in norms(served_vae, latent)
    served, _ = kernels(served_vae, latent)
    native, _ = kernels(native_vae, latent)
    assert (served - native).abs().max() < 1e-5  # float rounding: oneDNN's sums and rsqrt's


def test_training_keeps_f_normalize_and_its_gradients(settings):
    checkpoint = Checkpoint.from_settings(settings)
    vae = checkpoint.vae().requires_grad_(True)
    latent = torch.randn(1, *checkpoint.latent_shape(5, 32, 32)[1:])
    with torch.profiler.profile() as profile:
        vae.decode(latent).sample.mean().backward()
    assert "aten::linalg_vector_norm" in {event.key for event in profile.key_averages()}
    assert all(p.grad is not None for p in vae.decoder.parameters() if p.requires_grad)
