"""The training set of the experts: rendered clips encoded once by the trained VAE, with their combination.

In the world's own look, or in a style of it (`world.styles`) for a style adapter (training/lora.py).
Encoding is the costly part, so it runs in one process per core, each on its own seeded shard.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
from tqdm import tqdm

from training.clips import random_clip, to_tensor, training_combinations

ENCODE_PIXELS = 16 * 17 * 64 * 64  # per batch: 16 preview clips, 4 final ones


@dataclass
class LatentSet:
    latents: torch.Tensor  # (n, z, t, h, w), normalised to unit variance per channel
    combos: torch.Tensor  # (n,) index into training_combinations()
    objects: torch.Tensor | None = None  # (n, 1, t, h, w) bool: latent cells the object touches


def object_cells(masks: np.ndarray, spatial: int = 8, temporal: int = 4) -> torch.Tensor:
    """(T, H, W) pixel masks -> (1, t, h, w): the latent cells (the first frame alone, then `temporal`
    frames, `spatial` x `spatial` pixels each, as Wan's VAE compresses) the object's pixels fall in."""
    m = torch.from_numpy(masks).float()[None, None]
    first = torch.nn.functional.max_pool3d(m[:, :, :1], (1, spatial, spatial))
    rest = torch.nn.functional.max_pool3d(m[:, :, 1:], (temporal, spatial, spatial))
    return torch.cat([first, rest], 2)[0].bool()


def _shard(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vae_state, vae_config, seed, count, num_frames, size, mean, std, style = args
    from diffusers import AutoencoderKLWan

    torch.set_num_threads(1)
    vae = AutoencoderKLWan.from_config(vae_config)
    vae.load_state_dict(vae_state)
    vae.eval()
    combos = training_combinations()
    rng = np.random.default_rng(seed)
    shape = (1, -1, 1, 1, 1)
    batch = max(1, ENCODE_PIXELS // (num_frames * size * size))  # small convolutions waste less time in batches
    out, which, objects = [], [], []
    with torch.no_grad():
        for start in range(0, count, batch):
            indices = [int(rng.integers(len(combos))) for _ in range(min(batch, count - start))]
            clips = [random_clip(rng, num_frames, size, [combos[i]], style) for i in indices]
            frames = torch.stack([to_tensor(clip.frames) for clip in clips])
            latent = vae.encode(frames).latent_dist.mean
            out.extend((latent - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape))
            which.extend(indices)
            strides = vae_config["scale_factor_spatial"], vae_config["scale_factor_temporal"]
            objects.extend(object_cells(clip.masks, *strides) for clip in clips)
    return torch.stack(out), torch.tensor(which), torch.stack(objects)


def encode_clips(
    vae, count: int, num_frames: int, size: int, seed: int, workers: int = 2, shards: int = 16, style: str | None = None
) -> LatentSet:
    """`count` clips of `num_frames` x `size` x `size` (in `style`, None: the world's own), VAE-encoded and
    normalised with the VAE's statistics."""
    config = dict(vae.config)
    mean, std = config["latents_mean"], config["latents_std"]
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    sizes = [count // shards + (i < count % shards) for i in range(shards)]
    jobs = [(state, config, seed * 1000 + i, n, num_frames, size, mean, std, style) for i, n in enumerate(sizes) if n]
    parts = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for part in tqdm(pool.map(_shard, jobs), total=len(jobs), desc=f"encode {size}px x {num_frames}", unit="shard"):
            parts.append(part)
    return LatentSet(*(torch.cat([p[i] for p in parts]) for i in range(3)))
