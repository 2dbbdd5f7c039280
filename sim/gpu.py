"""The simulated accelerator (`device: sim`): what a GPU would compute, charged in time instead.

Every stage keeps its real code path - Serve deployments and handles, the job store, caches,
batching, metrics, placement on `num_gpus` - and only the model compute is replaced: an expert's
forward waits the cost model's seconds (sim/cost_model.py) times `sim.time_scale` and
returns zeros, the text encoder and the decoder wait theirs, a new replica waits its weight
loading. The latent a simulated request carries is a stand-in of a few numbers that names the
video it stands for (`DenoisingState.stands_for`), so hand-offs, the scheduler and the caches cost
the CPU what they cost on a real cluster's hosts, not what a 720p latent would cost on this one.
The decoder's video is a small grey stand-in of the request's length and frame rate.

Figures from a simulated run are simulated seconds (wall seconds / `time_scale`), always
labelled so (docs/scaling.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from contract.settings import ParallelSettings, Quantization, SimSettings
from monitoring.metrics import metrics
from sim.cost_model import CFG_PARALLEL_EFFICIENCY, CostModel

STAND_IN_LATENT = (1, 1, 1, 2, 2)  # what a simulated request's latent really is
STAND_IN_SIDE = 16  # px of the stand-in video's frames: the physics scorer's smallest

_current = threading.local()


@contextmanager
def standing_for(size: tuple[int, int, int] | None) -> Iterator[None]:
    """Forwards in this block (this thread) are charged as videos of `size` (frames, height, width)."""
    previous = getattr(_current, "size", None)
    _current.size = size
    try:
        yield
    finally:
        _current.size = previous


class SimulatedGpu:
    """One replica's simulated GPU: waits the cost model's seconds, scaled, and counts them.

    A GPU that holds both experts (co-located placement) swaps them in turn where its memory
    cannot hold the two at once (`CostModel.needs_swap`): each forward of the expert that is not
    resident first pays `swap_seconds`."""

    def __init__(
        self,
        sim: SimSettings,
        stage: str,
        parallel: ParallelSettings | None = None,
        quantization: Quantization = "none",
    ):
        """`parallel`: a replica that is a group of ranks (stages/parallel.py) computes on
        `parallel.degree` GPUs at once: its forwards take the cost model's parallel time, and
        each simulated second charged is that many GPU-seconds. `quantization`: of the experts'
        weights on it."""
        parallel = parallel or ParallelSettings()
        self.cost = CostModel.from_settings(sim, quantization)
        self.time_scale = sim.time_scale
        self.stage = stage
        self.gpus, self.cfg = parallel.degree, parallel.cfg
        self.speedup = parallel.ulysses * self.cost.parallel_efficiency(parallel.ulysses)
        self.seconds = 0.0  # simulated seconds this replica has charged
        self.swaps = 0
        self.resident: str | None = None  # the expert whose weights are on the GPU
        self._holds_both = not self.cost.needs_swap(parallel.ulysses)  # each CFG group holds a whole copy
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # a GPU computes one thing at a time: concurrent calls queue

    def charge(self, seconds: float, stage: str | None = None, expert: str | None = None) -> None:
        """Compute for `seconds` (on `expert`'s weights, swapping them in first if they are not there)."""
        with self._busy:
            swap = 0.0
            if expert is not None and expert != self.resident:
                if self.resident is not None and not self._holds_both:
                    swap = self.cost.swap_seconds()
                self.resident = expert
            time.sleep((seconds + swap) * self.time_scale)
        with self._lock:
            self.seconds += seconds + swap
            self.swaps += swap > 0
        metrics.inc("simulated_seconds", seconds * self.gpus, stage=stage or self.stage, gpu=self.cost.gpu.name)
        if swap:
            metrics.inc("simulated_seconds", swap * self.gpus, stage="swap", gpu=self.cost.gpu.name)

    def load(self, component: str) -> None:
        """A new replica copies its weights onto its GPU before it serves."""
        self.charge(self.cost.load_seconds(component))


class SimulatedTransformer:
    """Stands in for an expert's `WanTransformer3DModel`: the same call, the cost model's time, zeros out."""

    def __init__(self, gpu: SimulatedGpu, expert: str):
        self.gpu, self.expert = gpu, expert

    def __call__(self, hidden_states: torch.Tensor, timestep, encoder_hidden_states, return_dict: bool = True):
        size = getattr(_current, "size", None)
        if size is None:
            raise RuntimeError("a simulated forward outside standing_for(): the size of its video is unknown")
        frames, height, width = size
        # cond and uncond halves stacked into one forward are samples of one batch, as on a GPU;
        # CFG-parallel ranks split the batch between their two groups, which run at once.
        batch, cfg = hidden_states.shape[0], self.gpu.cfg
        split = CFG_PARALLEL_EFFICIENCY if cfg == 2 and batch > 1 else 1.0
        seconds = (
            self.gpu.cost.forward_seconds(height, width, frames, batch=-(-batch // cfg)) / self.gpu.speedup / split
        )
        self.gpu.charge(seconds, stage=self.expert, expert=self.expert)
        out = torch.zeros_like(hidden_states)
        return (out,) if not return_dict else {"sample": out}


def stand_in_frames(num_frames: int) -> np.ndarray:
    """The simulated decoder's video: mid-grey frames of the request's length."""
    return np.full((num_frames, STAND_IN_SIDE, STAND_IN_SIDE, 3), 128, np.uint8)
