"""The VAE, trained on the world's clips: whole preview-sized windows of 64x64 and 17 frames, cut from
clips rendered at 64 to 128 pixels so that it sees objects at the preview's and the final's scale.

L1 reconstruction, balanced between the object's pixels and the rest: the mean error over each,
added, so a small object counts as much as the background (with a plain L1 even one clip
overfit for 100 steps decodes the object as sky: background error 7, object error 90 levels;
balanced, 15 and 13, and the object's colour right). Decoded from the posterior's mean (sampling its unit-variance start drowns the signal for the
short time we train) with a small KL term that keeps the latents bounded. Afterwards the latents' per-channel mean and
standard deviation go into the config (`latents_mean`, `latents_std`), as Wan's VAE ships them,
so that the experts see unit-variance latents.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm import tqdm

from training.clips import random_clip, to_tensor
from training.snapshots import Snapshots

KL_WEIGHT = 1e-6


# Channels the starting autoencoder carries its colours in: the colour, its negative, a constant.
_COLOUR, _NEGATIVE, _CONSTANT = range(0, 3), range(3, 6), 6
_CARRIED = 7
# The constant channel dominates every RMS norm on the way, so that normalising barely depends on
# the colour (sqrt(K^2 + 2|rgb|^2) stays within 4 % of K).
_K = 8.0


def _zero(conv: torch.nn.Module) -> None:
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()


def _carry(conv: torch.nn.Module) -> None:
    """Identity on the carried channels, from the kernel's spatial centre and its current frame."""
    _zero(conv)
    kernel = conv.weight.shape[2:]
    centre = (-1, *(k // 2 for k in kernel[1:])) if len(kernel) == 3 else tuple(k // 2 for k in kernel)
    for c in range(_CARRIED):
        conv.weight[(c, c, *centre)] = 1.0


@torch.no_grad()
def init_for_training(vae: AutoencoderKLWan) -> None:
    """Start as a working autoencoder: the encoder averages each 8x8x4 block's colour into three
    latent channels, the decoder repeats it back (24 dB on the world's clips before the first step,
    where a randomly initialised VAE is at 15 dB after 600 steps).

    Every residual branch and the attention output start at zero (the identity, as residual networks
    train fastest from); the main path carries (rgb, -rgb, K) through the strided and upsampling
    convolutions as 2x2 averages and nearest-neighbour copies. The only non-linearity on that path is
    SiLU after each `norm_out`, and silu(x) - silu(-x) = x recovers the colour exactly. The other
    channels start at zero and are the training's to fill with detail."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        WanAttentionBlock,
        WanCausalConv3d,
        WanResample,
        WanResidualBlock,
    )

    narrowest = vae.config.base_dim * min(vae.config.dim_mult) // 2  # the decoder's upsamplers halve
    if narrowest < _CARRIED:
        raise ValueError(f"the VAE's narrowest stage has {narrowest} channels; the colour path needs {_CARRIED}")
    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            _zero(module.conv2)
            if isinstance(module.conv_shortcut, WanCausalConv3d):
                _carry(module.conv_shortcut)
        elif isinstance(module, WanAttentionBlock):
            _zero(module.proj)
        elif isinstance(module, WanResample):
            down = module.mode.startswith("down")
            conv = module.resample[1]
            _zero(conv)
            for c in range(_CARRIED):
                if down:  # the stride-2 window's top-left 2x2: an average pool
                    conv.weight[c, c, :2, :2] = 0.25
                else:
                    conv.weight[c, c, 1, 1] = 1.0
            if hasattr(module, "time_conv"):
                weight = module.time_conv.weight
                _zero(module.time_conv)
                for c in range(_CARRIED):
                    if down:  # the mean of the two frames this one stands for
                        weight[c, c, 1:, 0, 0] = 0.5
                    else:  # both output frames repeat the current one
                        weight[c, c, -1, 0, 0] = 1.0
                        weight[weight.shape[1] + c, c, -1, 0, 0] = 1.0
    for coder in (vae.encoder, vae.decoder):
        _zero(coder.conv_in)
        for c in _COLOUR:
            coder.conv_in.weight[c, c, -1, 1, 1] = 1.0
            coder.conv_in.weight[c + 3, c, -1, 1, 1] = -1.0
        coder.conv_in.bias[_CONSTANT] = _K
        # After norm_out the carried values are scaled by sqrt(channels) / |x|, with |x| about K.
        scale = (_K**2 + 1.0) ** 0.5 / coder.norm_out.gamma.shape[0] ** 0.5
        _zero(coder.conv_out)
        for c, negative in zip(_COLOUR, _NEGATIVE, strict=True):
            coder.conv_out.weight[c, c, -1, 1, 1] = scale
            coder.conv_out.weight[c, negative, -1, 1, 1] = -scale
    for conv in (vae.quant_conv, vae.post_quant_conv):
        _zero(conv)
        for c in range(conv.weight.shape[0]):
            conv.weight[c, c] = 1.0


def crop_batch(rng: np.random.Generator, batch: int, frames: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of `frames` x `crop` x `crop` from clips at 64-128 px, most of them on the object."""
    videos, masks = [], []
    for _ in range(batch):
        size = int(rng.choice([64, 96, 128]))
        clip = random_clip(rng, 17, size)
        t0 = int(rng.integers(0, 17 - frames + 1))
        if rng.random() < 0.75:
            cx, cy = clip.centers[t0 + frames // 2]
            x0 = int(np.clip(cx - crop / 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, size - crop))
            y0 = int(np.clip(cy - crop / 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, size - crop))
        else:
            x0, y0 = (int(v) for v in rng.integers(0, size - crop + 1, 2))
        window = (slice(t0, t0 + frames), slice(y0, y0 + crop), slice(x0, x0 + crop))
        videos.append(to_tensor(clip.frames[window]))
        masks.append(torch.from_numpy(clip.masks[window]).float()[None])
    return torch.stack(videos), torch.stack(masks)


def balanced_l1(recon: torch.Tensor, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the object's pixels plus that over the background's."""
    error = (recon - video).abs().mean(1, keepdim=True)
    background = (error * (1 - mask)).sum() / (1 - mask).sum().clamp(min=1)
    return background + (error * mask).sum() / mask.sum().clamp(min=1)


def train_vae(
    vae: AutoencoderKLWan,
    steps: int,
    seed: int,
    batch: int = 2,
    lr: float = 1e-3,
    frames: int = 17,
    crop: int = 64,
    snapshots: Snapshots | None = None,
) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    init_for_training(vae)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    snapshots = snapshots or Snapshots(None)
    parts = {"model": vae, "opt": opt, "schedule": schedule}
    first = snapshots.restore(parts, rng)
    recent = []
    bar = tqdm(range(first, steps), desc="vae", unit="step", initial=first, total=steps)
    for step in bar:
        video, mask = crop_batch(rng, batch, frames, crop)
        posterior = vae.encode(video).latent_dist
        recon = vae.decode(posterior.mean).sample
        l1 = balanced_l1(recon, video, mask)
        kl = posterior.kl().mean() / video[0].numel()
        loss = l1 + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        schedule.step()
        recent = (recent + [l1.item()])[-50:]
        bar.set_postfix(l1=f"{np.mean(recent):.4f}")
        snapshots.maybe_save(step + 1, parts, rng)
    vae.eval()
    return {"vae_l1": float(np.mean(recent))}


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, seed: int, clips: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the encoder's mean over whole preview clips."""
    rng = np.random.default_rng(seed)
    latents = torch.cat([encode(vae, random_clip(rng, 17, 64).frames) for _ in range(clips)])
    dims = [0, 2, 3, 4]
    return latents.mean(dims).tolist(), latents.std(dims).tolist()


@torch.no_grad()
def encode(vae: AutoencoderKLWan, frames: np.ndarray) -> torch.Tensor:
    """Raw (unnormalised) latent mean of one clip, (1, z, t, h, w)."""
    return vae.encode(to_tensor(frames)[None]).latent_dist.mean


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))
