"""A lighter VAE decoder, trained against the frozen encoder: the latents, and the experts trained on
them, stay valid.

The first VAE's decoder cost more than both experts on a CPU (on the real model the decode is a few
per cent of a video) and rounded every box into a ball. This one is narrower (`decoder_base_dim`,
which diffusers' `AutoencoderKLWan` takes as it is), starts as the colour-carrying decoder of
training/vae.py, and its loss adds the object's bounding-box corners - the pixels outside the box's
inscribed ellipse, which a box fills and a ball leaves to the background: what `world.reading`
looks at to tell one from the other.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm import tqdm

from stages.cpu_convolution import use_onednn_conv3d
from training.clips import random_clip, to_frames, to_tensor
from training.snapshots import Snapshots
from training.vae import balanced_l1, crop_batch, init_for_training, near_object
from world.reading import read_clip

CORNER_WEIGHT = 1.0  # of the corner term, beside the balanced L1's object and background terms
ENCODER_KEYS = ("encoder.", "quant_conv.")


def with_light_decoder(vae: AutoencoderKLWan, decoder_base_dim: int) -> AutoencoderKLWan:
    """`vae`'s encoder (its weights and latent statistics) with a new decoder `decoder_base_dim` wide."""
    light = AutoencoderKLWan.from_config({**vae.config, "decoder_base_dim": decoder_base_dim})
    init_for_training(light, coders=("decoder",))
    encoder = {k: v for k, v in vae.state_dict().items() if k.startswith(ENCODER_KEYS)}
    missing, unexpected = light.load_state_dict(encoder, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(ENCODER_KEYS)]
    return light.eval()


def bbox_corners(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, H, W) object masks -> the pixels of each frame's bounding box outside its inscribed
    ellipse (grown 10 %, as `world.reading` measures corner fill); frames with objects under 4 px: none."""
    out = torch.zeros_like(mask)
    h, w = mask.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for b, t in (mask[:, 0].flatten(2).amax(2) > 0).nonzero().tolist():
        ys, xs = mask[b, 0, t].nonzero(as_tuple=True)
        x0, x1, y0, y1 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
        if min(x1 - x0, y1 - y0) < 4:
            continue
        u = (xx - (x0 + x1) / 2) / ((x1 - x0) / 2)
        v = (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
        inside = (xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)
        out[b, 0, t] = (inside & (torch.hypot(u, v) > 1.1)).float()
    return out


def corner_l1(recon: torch.Tensor, video: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the bounding-box corners (0 when no frame has any)."""
    error = (recon - video).abs().mean(1, keepdim=True)
    return (error * corners).sum() / corners.sum().clamp(min=1)


def train_decoder(
    vae: AutoencoderKLWan,
    steps: int,
    seed: int,
    batch: int = 2,
    lr: float = 1e-3,
    frames: int = 9,
    crop: int = 64,
    snapshots: Snapshots | None = None,
    eval_every: int = 0,
    eval_clips: int = 24,
) -> dict:
    """Train `vae`'s decoder (and post_quant_conv) in place; the encoder does not move."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / steps)))
    )
    snapshots = snapshots or Snapshots(None)
    parts = {"model": vae, "opt": opt, "schedule": schedule}
    first = snapshots.restore(parts, rng)
    recent = []
    bar = tqdm(range(first, steps), desc="decoder", unit="step", initial=first, total=steps)
    for step in bar:
        video, mask = crop_batch(rng, batch, frames, crop)
        with torch.no_grad():
            latent = vae.encode(video).latent_dist.mean
        recon = vae.decode(latent).sample
        loss = balanced_l1(recon, video, near_object(mask)) + CORNER_WEIGHT * corner_l1(
            recon, video, bbox_corners(mask)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        recent = (recent + [loss.item()])[-50:]
        bar.set_postfix(loss=f"{np.mean(recent):.4f}")
        snapshots.maybe_save(step + 1, parts, rng)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:  # the stage reads the last
            vae.eval()
            bar.write(" ".join(f"{k}={v}" for k, v in {"step": step + 1, **read_back(vae, eval_clips)}.items()))
            vae.decoder.train()
    vae.eval().requires_grad_(False)
    return {"decoder_loss": float(np.mean(recent))}


@torch.no_grad()
def read_back(vae: AutoencoderKLWan, clips: int = 24, size: int = 64, seed: int = 7) -> dict:
    """`world.reading` on reconstructions of held-out world clips against what each clip shows: how
    often colour, object and motion read back right, and the decode's seconds per clip."""
    rng = np.random.default_rng(seed)
    use_onednn_conv3d(vae)  # as the served stages decode (training keeps the native kernels)
    right = {"color": [], "object": [], "motion": []}
    seconds = 0.0
    for _ in range(clips):
        clip = random_clip(rng, 17, size)
        latent = vae.encode(to_tensor(clip.frames)[None]).latent_dist.mean
        start = time.perf_counter()
        recon = vae.decode(latent).sample[0]
        seconds += time.perf_counter() - start
        reading = read_clip(to_frames(recon))
        for key in right:
            right[key].append(getattr(reading, key) == getattr(clip.scene, key))
    return {key: round(float(np.mean(v)), 3) for key, v in right.items()} | {"decode_s": round(seconds / clips, 3)}
