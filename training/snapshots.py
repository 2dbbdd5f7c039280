"""Snapshots of a training loop (weights, optimiser, schedule, random states) every few steps, so a
stage stopped midway resumes at its last snapshot instead of from the start, on the same random path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Snapshots:
    def __init__(self, path: Path | None, every: int = 200):
        self.path, self.every = path, every

    def restore(self, parts: dict[str, Any], rng: np.random.Generator, generator: torch.Generator | None = None) -> int:
        """Load the last snapshot into `parts` (objects with state_dict / load_state_dict) and
        the random states; returns the step to go on from (0 without a snapshot)."""
        if self.path is None or not self.path.exists():
            return 0
        saved = torch.load(self.path, weights_only=False)
        for name, part in parts.items():
            part.load_state_dict(saved[name])
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        if generator is not None:
            generator.set_state(saved["generator"])
        return saved["step"]

    def maybe_save(
        self, step: int, parts: dict[str, Any], rng: np.random.Generator, generator: torch.Generator | None = None
    ) -> None:
        """After `step` steps are done: a snapshot every `every` steps (written whole or not at all)."""
        if self.path is None or step % self.every:
            return
        state = {name: part.state_dict() for name, part in parts.items()}
        state.update(step=step, numpy_rng=rng.bit_generator.state, torch_rng=torch.get_rng_state())
        if generator is not None:
            state["generator"] = generator.get_state()
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
