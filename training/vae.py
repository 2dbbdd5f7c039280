"""The VAE, trained on the world's clips: whole 64x64 windows of 9 frames (two latent frames after
the first), cut from clips rendered at 64 to 128 pixels so that it sees objects at the preview's
and the final's scale.

L1 reconstruction, balanced between the object's surroundings and the rest: the mean error over
each, added. With a plain L1 even one clip overfit for 100 steps decodes the object as sky
(background error 7, object error 90 levels: it is 3 % of the pixels); balanced over the object's
own pixels the colour comes right, but a ball decodes as its 8x8 block, since the block's
corners count only in the background term; hence the object term covers the object grown by a
few pixels. A third term is the mean error over the object's bounding-box corners (outside the
box's inscribed ellipse): there a box and a ball of one size differ, and without it every box came
back a ball. Decoded from the posterior's mean (sampling its unit-variance start drowns the
signal for the short time we train) with a small KL term that keeps the latents bounded.
Afterwards the latents' per-channel mean and standard deviation go into the config
(`latents_mean`, `latents_std`), as Wan's VAE ships them, so that the experts see unit-variance
latents.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm import tqdm

from stages.cpu_convolution import use_onednn_conv3d
from stages.cpu_rms_norm import use_rsqrt_rms_norm
from training.clips import random_clip, to_frames, to_tensor
from training.snapshots import Snapshots
from world.reading import read_clip

KL_WEIGHT = 1e-6
# Of the loss's corner term, beside the balanced L1's object and background terms: a box and a ball
# of one size differ only there, and the L1 alone let every box decode as a ball.
CORNER_WEIGHT = 1.0
# The loss's object term covers this much around the object: a disc decoded as its 8x8 block
# errs only outside the disc, where a mask of the object alone would not look.
NEAR_OBJECT_PX = 4


# Channels the starting autoencoder carries its colours in: the colour, its negative, a constant.
_COLOUR, _NEGATIVE, _CONSTANT = range(0, 3), range(3, 6), 6
_CARRIED = 7
# The constant channel dominates every RMS norm on the way, so that normalising barely depends on
# the colour (sqrt(K^2 + 2|rgb|^2) stays within 4 % of K).
_K = 8.0
_DETAIL_SCALE = 0.1


def _zero(conv: torch.nn.Module) -> None:
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()


def _start(conv: torch.nn.Module, carried: range | list[int] = range(_CARRIED)) -> None:
    """Clear the carried output channels (set afterwards) and scale the others' random start down:
    they begin as small random features, alive to gradients, that barely move the norms."""
    rows = list(carried)
    conv.weight[rows] = 0.0
    others = [r for r in range(conv.weight.shape[0]) if r not in rows]
    conv.weight[others] *= _DETAIL_SCALE
    if conv.bias is not None:
        conv.bias.zero_()


def _carry(conv: torch.nn.Module) -> None:
    """Identity on the carried channels, from the kernel's spatial centre and its current frame."""
    _start(conv)
    kernel = conv.weight.shape[2:]
    centre = (-1, *(k // 2 for k in kernel[1:])) if len(kernel) == 3 else tuple(k // 2 for k in kernel)
    for c in range(_CARRIED):
        conv.weight[(c, c, *centre)] = 1.0


@torch.no_grad()
def init_for_training(vae: AutoencoderKLWan, coders: tuple[str, ...] = ("encoder", "decoder")) -> None:
    """Start as a working autoencoder: the encoder averages each latent cell's block of pixels (Wan's
    4x8x8) into three latent channels, the decoder repeats it back (24 dB on the world's clips
    before the first step, where a randomly initialised VAE is at 15 dB after 600 steps).

    Every residual branch and the attention output start at zero (the identity, as residual networks
    train fastest from); the main path carries (rgb, -rgb, K) through the strided and upsampling
    convolutions as 2x2 averages and nearest-neighbour copies. The only non-linearity on that path is
    SiLU after each `norm_out`, and silu(x) - silu(-x) = x recovers the colour exactly. Every other
    channel keeps a small random start (edges and positions within a block, for the training to
    turn into detail); nothing reads them into the colour path until the training does.

    `coders=("decoder",)` starts a new decoder alone, leaving a trained encoder as it is."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        WanAttentionBlock,
        WanCausalConv3d,
        WanResample,
        WanResidualBlock,
    )

    parts = [getattr(vae, coder) for coder in coders]
    narrowest = min(m.weight.shape[0] for part in parts for m in part.modules() if isinstance(m, torch.nn.Conv2d))
    if narrowest < _CARRIED:  # the upsamplers' convolutions are the narrowest: they halve
        raise ValueError(f"the VAE's narrowest stage has {narrowest} channels; the colour path needs {_CARRIED}")
    for module in (m for part in parts for m in part.modules()):
        if isinstance(module, WanResidualBlock):
            _zero(module.conv2)
            if isinstance(module.conv_shortcut, WanCausalConv3d):
                _carry(module.conv_shortcut)
        elif isinstance(module, WanAttentionBlock):
            _zero(module.proj)
        elif isinstance(module, WanResample):
            down = module.mode.startswith("down")
            conv = module.resample[1]
            _start(conv)
            for c in range(_CARRIED):
                if down:  # the stride-2 window's top-left 2x2: an average pool
                    conv.weight[c, c, :2, :2] = 0.25
                else:
                    conv.weight[c, c, 1, 1] = 1.0
            if hasattr(module, "time_conv"):
                weight = module.time_conv.weight
                dim = weight.shape[1]
                _start(module.time_conv, [*range(_CARRIED), *([] if down else range(dim, dim + _CARRIED))])
                for c in range(_CARRIED):
                    if down:  # the mean of the two frames this one stands for
                        weight[c, c, 1:, 0, 0] = 0.5
                    else:  # both output frames repeat the current one
                        weight[c, c, -1, 0, 0] = 1.0
                        weight[dim + c, c, -1, 0, 0] = 1.0
    # The latent's other channels keep their random start too: if both sides of them started at
    # zero, neither would ever get a gradient and the latent would stay three channels wide.
    z = vae.config.z_dim
    for coder in parts:
        _start(coder.conv_in)
        for c in _COLOUR:
            coder.conv_in.weight[c, c, -1, 1, 1] = 1.0
            coder.conv_in.weight[c + 3, c, -1, 1, 1] = -1.0
        coder.conv_in.bias[_CONSTANT] = _K
        # After norm_out the carried values are scaled by sqrt(channels) / |x|, with |x| about K.
        scale = (_K**2 + 1.0) ** 0.5 / coder.norm_out.gamma.shape[0] ** 0.5
        out = coder.conv_out
        _start(out, range(len(_COLOUR)))
        for c, negative in zip(_COLOUR, _NEGATIVE, strict=True):
            out.weight[c, c, -1, 1, 1] = scale
            out.weight[c, negative, -1, 1, 1] = -scale
    if "encoder" in coders:
        vae.encoder.conv_out.weight[z:] = 0.0  # log-variance: 0
    for conv in [{"encoder": vae.quant_conv, "decoder": vae.post_quant_conv}[coder] for coder in coders]:
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


def near_object(mask: torch.Tensor, radius: int = NEAR_OBJECT_PX) -> torch.Tensor:
    """The object's mask grown by `radius` pixels in each frame."""
    size = 2 * radius + 1
    return torch.nn.functional.max_pool3d(mask, (1, size, size), stride=1, padding=(0, radius, radius))


def balanced_l1(recon: torch.Tensor, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the object's pixels plus that over the background's."""
    error = (recon - video).abs().mean(1, keepdim=True)
    background = (error * (1 - mask)).sum() / (1 - mask).sum().clamp(min=1)
    return background + (error * mask).sum() / mask.sum().clamp(min=1)


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


def reconstruction_loss(recon: torch.Tensor, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The balanced L1 (object grown a few pixels, and background) plus the bounding-box corners,
    where a box and a ball differ."""
    return balanced_l1(recon, video, near_object(mask)) + CORNER_WEIGHT * corner_l1(recon, video, bbox_corners(mask))


def train_vae(vae: AutoencoderKLWan, steps: int, seed: int, **options) -> dict:
    """Train encoder and decoder together, from the colour-carrying start (`init_for_training`)."""
    init_for_training(vae)
    return train_reconstruction(vae, list(vae.parameters()), "vae", steps, seed, **options)


def train_reconstruction(
    vae: AutoencoderKLWan,
    params: list[torch.nn.Parameter],
    name: str,
    steps: int,
    seed: int,
    batch: int = 2,
    lr: float = 1e-3,
    frames: int = 9,
    crop: int = 64,
    snapshots: Snapshots | None = None,
    frozen_encoder: bool = False,
    eval_every: int = 0,
    eval_clips: int = 24,
) -> dict:
    """Train `params` of `vae` on world crops (`reconstruction_loss`, a small KL term while the encoder
    trains); every `eval_every` steps its reconstructions are read back into the log (`read_back`)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    (vae.decoder if frozen_encoder else vae).train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    floor = 0.05 if frozen_encoder else 0.0  # of the cosine: a new decoder still learns at the end
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 50) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    )
    snapshots = snapshots or Snapshots(None)
    parts = {"model": vae, "opt": opt, "schedule": schedule}
    first = snapshots.restore(parts, rng)
    recent = []
    bar = tqdm(range(first, steps), desc=name, unit="step", initial=first, total=steps)
    for step in bar:
        video, mask = crop_batch(rng, batch, frames, crop)
        with torch.set_grad_enabled(not frozen_encoder):
            posterior = vae.encode(video).latent_dist
        recon = vae.decode(posterior.mean).sample
        loss = reconstruction_loss(recon, video, mask)
        recent = (recent + [loss.item()])[-50:]
        if not frozen_encoder:
            loss = loss + KL_WEIGHT * posterior.kl().mean() / video[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        bar.set_postfix(loss=f"{np.mean(recent):.4f}")
        snapshots.maybe_save(step + 1, parts, rng)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:  # the stage reads the last
            vae.eval()
            bar.write(" ".join(f"{k}={v}" for k, v in {name: step + 1, **read_back(vae, eval_clips)}.items()))
            (vae.decoder if frozen_encoder else vae).train()
    vae.eval()
    return {f"{name}_loss": float(np.mean(recent))}


@torch.no_grad()
def read_back(vae: AutoencoderKLWan, clips: int = 24, size: int = 64, seed: int = 7) -> dict:
    """`world.reading` on reconstructions of world clips against what each clip shows: how often
    colour, object and motion read back right, and the decode's seconds per clip."""
    rng = np.random.default_rng(seed)
    use_rsqrt_rms_norm(use_onednn_conv3d(vae))  # as the served stages decode (training keeps the native kernels)
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
