"""Flow matching in diffusers' convention: the one objective the experts (training/experts.py) and
their style adapters (training/lora.py) train on, its step and its learning-rate schedule.

x_t = (1 - sigma) x_0 + sigma * noise, the model predicts the velocity noise - x_0, and sees the
timestep sigma * 1000. The high-noise expert learns sigma >= boundary_ratio (layout and motion),
the low-noise expert below it (detail). Text comes as the text encoder stage gives it: token states
zero-padded to max_sequence_length; one caption in ten is dropped to the empty prompt, so that
classifier-free guidance has an unconditional model to steer from.

The object is a few per cent of the latent cells and carries all of the motion, so the loss may
weigh the cells it touches more (`object_weight`: each counts 1 + object_weight times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from training.latents import LatentSet

CAPTION_DROPOUT = 0.1


@dataclass
class TextTable:
    states: torch.Tensor  # (n, L, dim) token states of every training caption, zero past each one's length
    per_combo: list[list[int]]  # caption indices of each combination
    empty: torch.Tensor  # (L0, dim) the empty prompt's states (the default negative prompt)
    max_sequence_length: int


def sample_sigmas(expert: str, boundary: float, n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator)
    if expert == "high":
        return boundary + (1 - boundary) * u
    # Below the boundary, weighted towards it: the low-noise expert's first steps fix the most.
    return (boundary * u.pow(0.7)).clamp(min=1e-3)


def text_batch(text: TextTable, combos: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    out = torch.zeros(len(combos), text.max_sequence_length, text.states.shape[-1])
    for row, combo in enumerate(combos.tolist()):
        if rng.random() < CAPTION_DROPOUT:
            states = text.empty
        else:
            options = text.per_combo[combo]
            states = text.states[options[rng.integers(len(options))]]
        out[row, : states.shape[0]] = states
    return out


def lr_schedule(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over `warmup` steps, times a cosine from the full rate at step 0 to a tenth at `steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps)))
    )


@dataclass
class FlowMatching:
    """One expert's objective on its range of sigmas, over sets of latents each drawn at its share of the steps."""

    expert: str  # "high" or "low"
    boundary: float
    sets: list[tuple[LatentSet, int, float]]  # (latents, batch size, share of the steps)
    text: TextTable
    object_weight: float = 0.0
    odds: np.ndarray = field(init=False)

    def __post_init__(self):
        shares = np.array([share for _, _, share in self.sets], float)
        self.odds = shares / shares.sum()

    def loss(self, transformer, rng: np.random.Generator, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        """A batch of one set, picked at its share, and the model's loss on it: the set's index and the loss."""
        which = int(rng.choice(len(self.sets), p=self.odds))
        data, batch, _ = self.sets[which]
        pick = torch.from_numpy(rng.integers(len(data.latents), size=batch))
        x0 = data.latents[pick]
        noise = torch.randn(x0.shape, generator=generator)
        sigma = sample_sigmas(self.expert, self.boundary, batch, generator).view(-1, 1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        states = text_batch(self.text, data.combos[pick], rng)
        pred = transformer(xt, sigma.flatten() * 1000, states, return_dict=False)[0]
        error = (pred - (noise - x0)).square()
        if not self.object_weight or data.objects is None:
            return which, error.mean()
        weight = 1 + self.object_weight * data.objects[pick].float()
        return which, (error * weight).mean() / weight.mean()

    def step(
        self,
        transformer,
        params: list[torch.nn.Parameter],
        opt: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> tuple[int, float]:
        """One training step on `params`, gradients clipped to norm 1: the set's index and the loss."""
        which, loss = self.loss(transformer, rng, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        return which, loss.item()
