"""Rendered clips of the world as the models see them: pixels in [-1, 1], (C, T, H, W)."""

from __future__ import annotations

import numpy as np
import torch

from world.render import Clip, render
from world.scene import all_combinations, is_held_out, sample_scene


def training_combinations() -> list[dict[str, str]]:
    """Every attribute combination except the held-out ones."""
    return [a for a in all_combinations() if not is_held_out(a)]


def random_clip(rng: np.random.Generator, num_frames: int, size: int, combos=None, style: str | None = None) -> Clip:
    combos = combos or training_combinations()
    return render(sample_scene(combos[rng.integers(len(combos))], rng), num_frames, size, style=style)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def to_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
