"""The Mixture-of-Experts denoising plan: timesteps, the boundary split, latents, scheduler state.

UniPC is a multistep solver: each step uses the model outputs of the previous ones. So
the scheduler's state travels with the latent when the high-noise expert hands over to
the low-noise expert, and the pair (latent, scheduler state) is what a phase returns.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from stages.checkpoint import Checkpoint

SchedulerState = dict[str, Any]


@dataclass
class DenoisingState:
    """Everything a phase needs to continue the denoising where the previous one stopped."""

    latents: torch.Tensor  # float32, on the CPU between stages
    scheduler: SchedulerState
    step: int  # index of the next timestep to run
    # On the simulated accelerator: the (frames, height, width) of the video whose latent `latents`
    # stands in for (sim/gpu.py); None for a real latent.
    stands_for: tuple[int, int, int] | None = None

    def as_plain(self) -> dict[str, Any]:
        """Tensors, numbers and lists only: what the latent cache stores."""
        plain = {"latents": self.latents, "scheduler": self.scheduler, "step": self.step}
        return plain if self.stands_for is None else {**plain, "stands_for": list(self.stands_for)}

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> DenoisingState:
        stands_for = plain.get("stands_for")
        return cls(
            plain["latents"], plain["scheduler"], plain["step"], None if stands_for is None else tuple(stands_for)
        )


@dataclass(frozen=True)
class DenoisingPlan:
    timesteps: tuple[int, ...]
    boundary_step: int  # steps [0, boundary_step) are high-noise, the rest low-noise
    sigmas: tuple[float, ...] = ()  # the noise level of each step

    def refinement_steps(self, strength: float) -> range:
        """The steps a final of a previewed shot runs: from the first whose noise level is at most
        `strength`, never before the boundary (the preview's high-noise phase stands), and at least
        the last (a final is always denoised at its own size)."""
        first = next((i for i, sigma in enumerate(self.sigmas) if sigma <= strength), self.num_steps - 1)
        return range(min(max(first, self.boundary_step), self.num_steps - 1), self.num_steps)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def high_noise_steps(self) -> range:
        return range(0, self.boundary_step)

    @property
    def low_noise_steps(self) -> range:
        return range(self.boundary_step, self.num_steps)


class Scheduler:
    """Builds the checkpoint's scheduler and moves its state in and out of plain data."""

    def __init__(self, scheduler_class: type, config: dict):
        self.scheduler_class = scheduler_class
        self.config = config
        # the ingress plans every job
        self._plans: dict[tuple[int, float | None, float | None], DenoisingPlan] = {}
        self._blanks: dict[float | None, object] = {}

    def _new(self, flow_shift: float | None = None):
        """A fresh scheduler (with `flow_shift` instead of the config's, if given): a copy of one built
        once (from_config inspects signatures, ~3 ms). Shallow is enough: set_timesteps and
        `restore` assign every attribute a job changes."""
        if flow_shift not in self._blanks:
            config = self.config if flow_shift is None else {**self.config, "flow_shift": flow_shift}
            self._blanks[flow_shift] = self.scheduler_class.from_config(config)
        return copy.copy(self._blanks[flow_shift])

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> Scheduler:
        return cls(checkpoint.scheduler_class(), checkpoint.scheduler_config())

    def start(
        self, num_steps: int, boundary_ratio: float | None, flow_shift: float | None = None
    ) -> tuple[DenoisingPlan, SchedulerState]:
        scheduler = self._new(flow_shift)
        scheduler.set_timesteps(num_steps, device="cpu")
        scheduler.set_begin_index(0)  # as WanPipeline does: no device sync to find the index
        timesteps = tuple(int(t) for t in scheduler.timesteps)
        if boundary_ratio is None:
            boundary_step = len(timesteps)  # one expert runs every step
        else:
            boundary_t = boundary_ratio * scheduler.config.num_train_timesteps
            boundary_step = sum(1 for t in timesteps if t >= boundary_t)
        sigmas = tuple(float(s) for s in scheduler.sigmas[: len(timesteps)])
        return DenoisingPlan(timesteps, boundary_step, sigmas), self.capture(scheduler)

    def plan(self, num_steps: int, boundary_ratio: float | None, flow_shift: float | None = None) -> DenoisingPlan:
        key = (num_steps, boundary_ratio, flow_shift)
        if key not in self._plans:  # building a scheduler costs more than the rest of admitting a job
            self._plans[key] = self.start(num_steps, boundary_ratio, flow_shift)[0]
        return self._plans[key]

    def restore(self, state: SchedulerState):
        scheduler = self._new()
        scheduler.__dict__.update(copy.deepcopy(state))
        return scheduler

    def resample(self, state: DenoisingState, seed: int) -> DenoisingState:
        """The same layout with new detail noise: the boundary latent re-noised from its clean
        estimate, x = (1 - sigma) x0 + sigma * noise (flow matching), and the multistep
        history cleared so the solver restarts there (SDEdit at the MoE boundary)."""
        x0 = state.scheduler["model_outputs"][-1]  # UniPC keeps its outputs as x0 predictions
        if x0 is None:
            raise ValueError("re-sampling needs the high-noise phase's last model output")
        sigma = float(state.scheduler["sigmas"][state.step])
        noise = prepare_latents(tuple(state.latents.shape), seed)
        order = len(state.scheduler["model_outputs"])
        scheduler = {
            **state.scheduler,
            "model_outputs": [None] * order,
            "timestep_list": [None] * order,
            "lower_order_nums": 0,
            "last_sample": None,
        }
        return DenoisingState((1 - sigma) * x0.float() + sigma * noise, scheduler, state.step, state.stands_for)

    def refine(
        self,
        source: torch.Tensor,
        shape: tuple[int, ...],
        seed: int,
        num_steps: int,
        boundary_ratio: float | None,
        strength: float,
        flow_shift: float | None = None,
    ) -> DenoisingState:
        """Where the final of a previewed shot starts (SDEdit): the preview's clean latent `source`,
        resized to `shape` (frames, height and width of the latent), re-noised with the request's own
        noise to the first refinement step, x = (1 - sigma) x0 + sigma * noise; the solver starts
        there with no history."""
        plan, state = self.start(num_steps, boundary_ratio, flow_shift)
        steps = plan.refinement_steps(strength)
        upsampled = F.interpolate(source.float(), size=tuple(shape[2:]), mode="trilinear", align_corners=False)
        sigma = plan.sigmas[steps.start] if steps else 0.0
        latents = (1 - sigma) * upsampled + sigma * prepare_latents(tuple(shape), seed)
        return DenoisingState(latents, {**state, "_begin_index": steps.start}, steps.start)

    @staticmethod
    def capture(scheduler) -> SchedulerState:
        """The scheduler's mutable state (timesteps, sigmas, step index, multistep history)."""
        state = {k: v for k, v in vars(scheduler).items() if k != "_internal_dict"}
        return copy.deepcopy(state)


def latent_bytes(latents: torch.Tensor) -> bytes:
    """A finished latent as stored next to its mp4 (half precision: a 720p latent is ~10 MB)."""
    from safetensors.torch import save

    return save({"latents": latents.detach().to(torch.float16).contiguous()})


def as_kept(latents: torch.Tensor) -> torch.Tensor:
    """A finished latent as `latent_bytes` keeps it (half precision), read back: what a final of its
    shot starts from, in process as on the cluster."""
    return latents.detach().to(torch.float16).float()


def latent_from_bytes(data: bytes) -> torch.Tensor:
    from safetensors.torch import load

    return load(data)["latents"].float()


def prepare_latents(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Initial noise, drawn on the CPU so a seed gives the same video on any device."""
    return randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
