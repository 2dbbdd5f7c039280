"""The stages composed in one process: what `t2v generate`, the local batch engine,
benchmarks and tests use.

The in-process executor of the stage list (stages/stage_list.py): the same `JobRunner` as the
Serve ingress, its stage calls going to the stages in this process, each answering the job's
state: text encoder -> high-noise expert -> low-noise expert -> decoder (VAE, mp4, physics
score). Step by step it equals diffusers' `WanPipeline`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from cache.store import LatentCache
from contract.experts import ExpertKind
from contract.messages import PhysicsResult
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from stages.checkpoint import Checkpoint
from stages.decoder import Decoder
from stages.denoising import DenoisingPlan, DenoisingState, Scheduler, as_kept
from stages.expert import Expert
from stages.job_state import JobState
from stages.runner import JobRunner
from stages.stage import Stage, StageEvents
from stages.stage_list import DecodeVideo, EncodePrompt, HighNoisePhase, LowNoisePhase, ResultCache
from stages.text_encoder import PromptEmbeddings, TextEncoder
from stages.validation import RequestValidator


@dataclass
class GenerationResult:
    request: GenerationRequest
    model_id: str
    frames: np.ndarray | None  # uint8 (T, H, W, 3); None when the mp4 came from the result cache
    mp4: bytes
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    steps: dict[str, int] = field(default_factory=dict)  # denoising steps run per expert stage
    cache: dict[str, bool | None] = field(default_factory=dict)  # level -> hit (None: not used)
    physics: PhysicsResult | None = None
    latents: Any = None  # the kept video's final latent as kept (a final of its shot starts from it); None when cached


def wan_pipeline_arguments(request: GenerationRequest, checkpoint: Checkpoint) -> dict:
    """`diffusers.WanPipeline.__call__` arguments that make the same video as `Pipeline(request)`
    on `checkpoint` (the reference our equivalence test and stage benchmark compare against)."""
    import torch

    two_experts = checkpoint.has_low_noise_expert
    return dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        guidance_scale_2=request.guidance_scale_2 if two_experts else None,
        generator=torch.Generator().manual_seed(request.seed),
        output_type="np",
        max_sequence_length=checkpoint.max_sequence_length,
    )


class StepEvents(StageEvents):
    """In process: progress goes to the caller's `on_step`; stage latency to the metrics."""

    def __init__(self, on_step: Callable[[int], None] | None):
        self.on_step = on_step

    def step(self, index: int) -> None:
        if self.on_step is not None:
            self.on_step(index)


class Pipeline:
    def __init__(self, checkpoint: Checkpoint, cache: LatentCache | None = None, batching: bool = False):
        """`batching`: the experts batch the steps of concurrent calls (from threads); off by
        default, as one call at a time has nothing to batch with."""
        self.checkpoint = checkpoint
        self.cache = cache
        self.text_encoder = TextEncoder(checkpoint, cache)
        self.high_noise_expert = Expert(checkpoint, ExpertKind.HIGH_NOISE, batching=batching)
        self.low_noise_expert = (
            Expert(checkpoint, ExpertKind.LOW_NOISE, batching=batching) if checkpoint.has_low_noise_expert else None
        )
        self.scheduler = Scheduler.from_checkpoint(checkpoint)
        self.decoder = Decoder(checkpoint)
        self.validator = RequestValidator(checkpoint.settings, checkpoint)
        # The stage list on this process's stage classes (the decoder keeps the frames in hand).
        self.stages: dict[str, Stage] = {
            EncodePrompt.name: EncodePrompt(self.text_encoder),
            HighNoisePhase.name: HighNoisePhase(self.high_noise_expert, cache),
            DecodeVideo.name: DecodeVideo(self.decoder, keep_frames=True),
        }
        if self.low_noise_expert is not None:
            self.stages[LowNoisePhase.name] = LowNoisePhase(self.low_noise_expert)

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        return cls(Checkpoint.from_settings(settings), LatentCache.from_settings(settings))

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    def simulated_seconds(self) -> dict[str, float]:
        """On the simulated accelerator: the GPU seconds each stage has charged so far (weight loading
        included); empty on a real device."""
        if not self.checkpoint.simulated:
            return {}
        experts = [e for e in (self.high_noise_expert, self.low_noise_expert) if e is not None]
        return {
            "encode": self.text_encoder.gpu.seconds,
            **{e.kind.stage: e.transformer.gpu.seconds for e in experts},
            "decode": self.decoder.gpu.seconds,
        }

    def plan(self, request: GenerationRequest) -> DenoisingPlan:
        return self.scheduler.plan(request.num_inference_steps, self.checkpoint.boundary_ratio, request.flow_shift)

    def runner(self, on_step: Callable[[int], None] | None = None) -> JobRunner:
        """The shared stage sequence on this process's stages: each call answers its state."""
        events = StepEvents(on_step)
        calls = {name: partial(self._call, stage, events) for name, stage in self.stages.items()}
        return JobRunner(
            lambda _job: calls,
            self.low_noise_expert is not None,
            self.plan,
            ResultCache(self.cache, self.checkpoint.identity),
            min_dynamics=self.checkpoint.settings.repair_min_dynamics,
            finalize_strength=self.checkpoint.settings.finalize_strength,
        )

    @staticmethod
    def _call(stage: Stage, events: StageEvents, state: JobState, attempt: int | None) -> JobState:
        return stage(state, events, attempt)

    def denoise(self, request: GenerationRequest, on_step: Callable[[int], None] | None = None) -> Denoised:
        """Encode the prompt and run both expert phases (steps 1-3 of the runner), keeping the
        boundary: what tests and benchmarks look into."""
        _, state = self.runner(on_step).denoise(JobState("local", request))
        return Denoised(state.final, state.boundary, state.embeddings, state.timings, state.cache)

    def final_of(self, preview: GenerationResult, **fields) -> GenerationResult:
        """The final of `preview`'s shot, as `POST /v1/videos` with `from` makes it: `fields` may
        set the preset (default "final"), size and steps; the rest is the preview's."""
        request = self.validator.final_of(preview.request, fields, preview_id="local")
        return self(request, source=preview.latents)

    def generate_frames(self, request: GenerationRequest) -> np.ndarray:
        """Float frames in [0, 1] of shape (T, H, W, 3), as `WanPipeline(output_type="np")`."""
        return self.decoder(self.denoise(request).state.latents)

    def __call__(
        self, request: GenerationRequest, on_step: Callable[[int], None] | None = None, source=None
    ) -> GenerationResult:
        """`source`: for a final of a previewed shot (`request.from_video`), the preview's
        `GenerationResult.latents`."""
        if (request.from_video is None) != (source is None):
            raise ValueError("the final of a shot needs its preview's latents, and only it takes them")
        runner = self.runner(on_step)
        cached = runner.results.in_hand(
            runner.results.cached(request), OutputStore(self.checkpoint.settings.output_uri)
        )
        if cached is not None:
            return GenerationResult(
                request, self.model_id, None, cached.mp4, cache={"result": True}, physics=cached.physics
            )
        outcome = asyncio.run(runner.run_stages(JobState("local", request, source=source)))
        if outcome.status != "completed":
            raise RuntimeError(f"the job ended {outcome.status}")
        plan = self.plan(request)
        steps = {ExpertKind.HIGH_NOISE.stage: len(plan.high_noise_steps)}
        if self.low_noise_expert is not None:
            steps[ExpertKind.LOW_NOISE.stage] = len(plan.low_noise_steps) * len(outcome.attempts)
        if request.from_video is not None:
            refined = len(plan.refinement_steps(self.checkpoint.settings.finalize_strength))
            steps = {ExpertKind.HIGH_NOISE.stage: 0, ExpertKind.LOW_NOISE.stage: refined}
        kept = outcome.kept
        return GenerationResult(
            request,
            self.model_id,
            kept.frames,
            outcome.video.mp4,
            outcome.timings,
            steps,
            outcome.cache,
            outcome.physics,
            as_kept(kept.final.latents),
        )


@dataclass
class Denoised:
    state: DenoisingState  # after the low-noise phase
    boundary: DenoisingState  # after the high-noise phase (a physics retry starts again here)
    embeddings: PromptEmbeddings
    timings: dict[str, float]
    hits: dict[str, bool | None]
