"""The default model's light decoder (training/decoder.py): it decodes the finished encoder's latents,
starts as a working decoder, trains without moving the encoder, and its loss looks at the corners
that tell a box from a ball."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.default_model import DECODER_BASE_DIM, build_default_pipeline
from training.clips import random_clip, to_frames, to_tensor
from training.decoder import train_decoder, with_light_decoder
from training.vae import bbox_corners, corner_l1, init_for_training, psnr, read_back


@pytest.fixture(scope="module")
def encoder_vae():
    """A VAE as the recipe's VAE stage leaves it (here: at its colour-carrying start)."""
    vae = build_default_pipeline().vae
    init_for_training(vae)
    return vae


def test_the_light_decoder_is_narrower_and_reads_the_same_latents(encoder_vae):
    light = with_light_decoder(encoder_vae, DECODER_BASE_DIM)
    assert light.config.decoder_base_dim == DECODER_BASE_DIM == encoder_vae.config.base_dim // 2
    assert light.decoder.conv_out.weight.shape[1] < encoder_vae.decoder.conv_out.weight.shape[1] * 2
    decoder_params = sum(p.numel() for p in light.decoder.parameters())
    assert decoder_params < sum(p.numel() for p in light.encoder.parameters()) / 2

    clip = random_clip(np.random.default_rng(5), 17, 64)
    video = to_tensor(clip.frames)[None]
    with torch.no_grad():
        latent = light.encode(video).latent_dist.mean
        assert torch.equal(latent, encoder_vae.encode(video).latent_dist.mean)  # the experts' latents stay valid
        decoded = to_frames(light.decode(latent).sample[0])
    assert psnr(decoded, clip.frames) > 20  # a working decoder before its first step


def test_training_moves_the_decoder_only(encoder_vae):
    light = with_light_decoder(encoder_vae, DECODER_BASE_DIM)
    before = {k: v.clone() for k, v in light.state_dict().items()}
    result = train_decoder(light, steps=2, seed=0, frames=5, crop=32)
    after = light.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"decoder", "post_quant_conv"} and result["decoder_loss"] > 0
    assert not any(p.requires_grad for p in light.parameters())  # handed back for inference


def test_the_corner_term_sees_where_a_box_and_a_ball_differ():
    size = 24
    yy, xx = np.mgrid[:size, :size] + 0.5
    box = torch.zeros(1, 1, 1, size, size)
    box[..., 4:20, 4:20] = 1
    ball = torch.from_numpy((np.hypot(xx - 12, yy - 12) < 8).astype(np.float32))[None, None, None]
    corners = bbox_corners(box)
    assert corners.sum() > 0 and torch.equal(bbox_corners(ball), corners)  # the same bounding box
    assert (corners * box).sum() == corners.sum()  # a box fills its corners
    assert (corners * ball).sum() == 0  # a ball leaves them to the background
    assert bbox_corners(torch.zeros_like(box)).sum() == 0

    video = box.expand(1, 3, 1, size, size) * 2 - 1  # the box, white on black
    rounded = ball.expand(1, 3, 1, size, size) * 2 - 1  # decoded as a ball
    assert corner_l1(rounded, video, corners) == pytest.approx(2.0)
    assert corner_l1(video, video, corners) == 0


def test_reconstructions_are_read_back_against_the_clips(encoder_vae):
    result = read_back(with_light_decoder(encoder_vae, DECODER_BASE_DIM), clips=2)
    assert set(result) == {"color", "object", "motion", "decode_s"}
    assert all(0 <= result[k] <= 1 for k in ("color", "object", "motion")) and result["decode_s"] > 0
