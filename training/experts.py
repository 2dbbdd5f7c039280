"""The two experts, trained by flow matching (training/flow_matching.py), each on its own part of the
noise schedule (as Wan2.2 trains them): the high-noise expert on sigma >= boundary_ratio (layout and
motion), the low-noise expert below it (detail). Every weight trains; an exponential moving average
of the weights is what ships.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from training.flow_matching import FlowMatching, TextTable, lr_schedule
from training.latents import LatentSet
from training.snapshots import Snapshots


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
    object_weight: float = 0.0,
    after_step: Callable[[int, torch.nn.Module], dict | None] | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train `transformer` in place; returns the final loss and the EMA weights. `after_step(steps done,
    EMA model)` runs after every step; what it returns, if anything, is written to the log."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    params = list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = lr_schedule(opt, warmup=100, steps=steps)
    objective = FlowMatching(expert, boundary, sets, text, object_weight)
    recent = {i: [] for i in range(len(sets))}
    snapshots = snapshots or Snapshots(None)
    parts = {"model": transformer, "ema": ema, "opt": opt, "schedule": schedule}
    first = snapshots.restore(parts, rng, generator)
    bar = tqdm(range(first, steps), desc=f"{expert}-noise expert", unit="step", position=position, initial=first)
    for step in bar:
        which, loss = objective.step(transformer, params, opt, schedule, rng, generator)
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        recent[which] = (recent[which] + [loss])[-100:]
        bar.set_postfix({f"loss{i}": f"{np.mean(v):.4f}" for i, v in recent.items() if v})
        snapshots.maybe_save(step + 1, parts, rng, generator)
        if after_step is not None and (note := after_step(step + 1, ema)):
            bar.write(" ".join(f"{k}={v}" for k, v in note.items()))
    transformer.eval()
    losses = {f"{expert}_loss_set{i}": float(np.mean(v)) for i, v in recent.items() if v}
    return losses, {k: v.detach().clone() for k, v in ema.state_dict().items()}
