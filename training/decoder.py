"""A lighter VAE decoder, trained against the frozen encoder: the latents, and the experts trained on
them, stay valid.

The first VAE's decoder cost more than both experts on a CPU (on the real model the decode is a few
per cent of a video) and rounded every box into a ball. This one is narrower (`decoder_base_dim`,
which diffusers' `AutoencoderKLWan` takes as it is), starts as the colour-carrying decoder of
training/vae.py, and trains on the VAE's own loss (`reconstruction_loss`: the balanced L1 and the
object's bounding-box corners).
"""

from __future__ import annotations

from diffusers import AutoencoderKLWan

from training.vae import init_for_training, train_reconstruction

ENCODER_KEYS = ("encoder.", "quant_conv.")


def with_light_decoder(vae: AutoencoderKLWan, decoder_base_dim: int) -> AutoencoderKLWan:
    """`vae`'s encoder (its weights and latent statistics) with a new decoder `decoder_base_dim` wide."""
    light = AutoencoderKLWan.from_config({**vae.config, "decoder_base_dim": decoder_base_dim})
    init_for_training(light, coders=("decoder",))
    encoder = {k: v for k, v in vae.state_dict().items() if k.startswith(ENCODER_KEYS)}
    missing, unexpected = light.load_state_dict(encoder, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(ENCODER_KEYS)]
    return light.eval()


def train_decoder(vae: AutoencoderKLWan, steps: int, seed: int, **options) -> dict:
    """Train `vae`'s decoder (and post_quant_conv) in place; the encoder does not move."""
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    result = train_reconstruction(vae, params, "decoder", steps, seed, frozen_encoder=True, **options)
    vae.requires_grad_(False)
    return result
