"""The two experts, trained by flow matching, each on its own part of the noise schedule (as Wan2.2 trains them).

Flow matching in diffusers' convention: x_t = (1 - sigma) x_0 + sigma * noise, the model
predicts the velocity noise - x_0, and sees the timestep sigma * 1000. The high-noise expert
learns sigma >= boundary_ratio (layout and motion), the low-noise expert below it (detail).
Text comes as the text encoder stage gives it: token states zero-padded to
max_sequence_length; one caption in ten is dropped to the empty prompt, so that
classifier-free guidance has an unconditional model to steer from. An exponential moving
average of the weights is what ships.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from training.latents import LatentSet
from training.snapshots import Snapshots

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


def train_expert(
    transformer,
    expert: str,
    sets: list[tuple[LatentSet, int, float]],  # (latents, batch size, share of the steps)
    text: TextTable,
    boundary: float,
    steps: int,
    seed: int,
    lr: float = 4e-4,
    ema_decay: float = 0.998,
    position: int = 0,
    snapshots: Snapshots | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train `transformer` in place; returns the final loss and the EMA weights."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps)))
    )
    shares = np.array([share for _, _, share in sets], float)
    recent = {i: [] for i in range(len(sets))}
    snapshots = snapshots or Snapshots(None)
    parts = {"model": transformer, "ema": ema, "opt": opt, "schedule": schedule}
    first = snapshots.restore(parts, rng, generator)
    bar = tqdm(range(first, steps), desc=f"{expert}-noise expert", unit="step", position=position, initial=first)
    for step in bar:
        which = int(rng.choice(len(sets), p=shares / shares.sum()))
        data, batch, _ = sets[which]
        pick = torch.from_numpy(rng.integers(len(data.latents), size=batch))
        x0 = data.latents[pick]
        noise = torch.randn(x0.shape, generator=generator)
        sigma = sample_sigmas(expert, boundary, batch, generator).view(-1, 1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        states = text_batch(text, data.combos[pick], rng)
        pred = transformer(xt, sigma.flatten() * 1000, states, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        schedule.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        recent[which] = (recent[which] + [loss.item()])[-100:]
        bar.set_postfix({f"loss{i}": f"{np.mean(v):.4f}" for i, v in recent.items() if v})
        snapshots.maybe_save(step + 1, parts, rng, generator)
    transformer.eval()
    losses = {f"{expert}_loss_set{i}": float(np.mean(v)) for i, v in recent.items() if v}
    return losses, {k: v.detach().clone() for k, v in ema.state_dict().items()}
