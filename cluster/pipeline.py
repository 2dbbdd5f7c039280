"""The stages composed in one process: what `t2v generate`, the local batch engine,
benchmarks and tests use.

It runs the same `JobRunner` as the Serve ingress, on stage calls that go to the plain
stage classes in this process: text encoder -> high-noise expert -> low-noise expert ->
decoder (VAE, mp4, physics score). Step by step it equals diffusers' `WanPipeline`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cache.store import LatentCache
from contract.experts import ExpertKind
from contract.messages import PhysicsResult, Video
from contract.request import GenerationRequest
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.decoder import Decoder
from stages.denoising import DenoisingPlan, DenoisingState, Scheduler
from stages.expert import Expert
from stages.runner import JobRunner, Stages
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
    latents: Any = None  # the kept video's final latent (a final of its shot starts from it); None when cached


def wan_pipeline_arguments(request: GenerationRequest, two_experts: bool = True) -> dict:
    """`diffusers.WanPipeline.__call__` arguments that make the same video as `Pipeline(request)`
    (the reference our equivalence test and stage benchmark compare against)."""
    import torch

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
    )


@dataclass
class _Job:
    """What the in-process stages note about one job: timings, cache levels, frames."""

    on_step: Callable[[int], None] | None
    source: Any = None  # the preview's final latent, for the final of its shot (`from_video`)
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, bool | None] = field(default_factory=dict)
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # per attempt
    latents: dict[int, Any] = field(default_factory=dict)  # per attempt

    def timed(self, stage: str, start: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


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
        return self.scheduler.plan(request.num_inference_steps, self.checkpoint.boundary_ratio)

    def runner(self, job: _Job) -> JobRunner:
        """The shared stage sequence on this process's stage classes."""
        return JobRunner(
            self._stages(job),
            self.plan,
            self.checkpoint.identity,
            self.cache,
            min_dynamics=self.checkpoint.settings.repair_min_dynamics,
            finalize_strength=self.checkpoint.settings.finalize_strength,
        )

    def _stages(self, job: _Job) -> Stages:
        def encode(_job_id: str, request: GenerationRequest, base_prompt: bool) -> PromptEmbeddings:
            start = time.perf_counter()
            text = request.base_prompt if base_prompt else request.prompt
            embeddings = self.text_encoder(
                text, request.negative_prompt, request.classifier_free_guidance, request.cache
            )
            if not base_prompt:
                job.cache["embeddings"] = embeddings.cache_hit if self.cache is not None and request.cache else None
            job.timed("encode", start)
            return embeddings

        def high_noise(
            _job_id: str, request: GenerationRequest, embeddings: PromptEmbeddings, base: PromptEmbeddings | None
        ) -> DenoisingState:
            start = time.perf_counter()
            state, job.cache["boundary"] = self.high_noise_expert.shared_phase(
                request, embeddings, base, self.cache, job.on_step
            )
            job.timed("high_noise", start)
            return state

        def low_noise(
            _job_id: str,
            request: GenerationRequest,
            embeddings: PromptEmbeddings,
            boundary: DenoisingState,
            resample_seed: int | None,
        ) -> DenoisingState:
            start = time.perf_counter()
            state = self.low_noise_expert.phase(request, embeddings, boundary, job.on_step, resample_seed, job.source)
            job.timed("low_noise", start)
            return state

        def decode(_job_id: str, request: GenerationRequest, state: DenoisingState, attempt: int) -> Video:
            seed = request.resample_seed(attempt) if attempt else request.seed
            video = self.decoder.video(request, state.latents, seed)
            for part, seconds in video.timings.items():
                job.timings[part] = job.timings.get(part, 0.0) + seconds
            job.frames[attempt] = video.frames
            job.latents[attempt] = state.latents
            return Video(attempt=attempt, seed=seed, physics=video.physics, mp4=video.mp4)

        return Stages(encode, high_noise, low_noise if self.low_noise_expert is not None else None, decode)

    def denoise(self, request: GenerationRequest, on_step: Callable[[int], None] | None = None) -> Denoised:
        """Encode the prompt and run both expert phases (steps 1-3 of the runner), keeping the
        boundary: what tests and benchmarks look into."""
        job = _Job(on_step)
        denoised = self.runner(job).denoise("local", request)
        return Denoised(denoised.state, denoised.boundary, denoised.embeddings, job.timings, job.cache)

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
        job = _Job(on_step, source)
        runner = self.runner(job)
        if (cached := runner.cached(request)) is not None:
            return GenerationResult(
                request, self.model_id, None, cached.mp4, cache={"result": True}, physics=cached.physics
            )
        outcome = asyncio.run(runner.run_stages("local", request))
        plan = self.plan(request)
        steps = {ExpertKind.HIGH_NOISE.stage: len(plan.high_noise_steps)}
        if self.low_noise_expert is not None:
            steps[ExpertKind.LOW_NOISE.stage] = len(plan.low_noise_steps) * outcome.attempts
        if request.from_video is not None:
            refined = len(plan.refinement_steps(self.checkpoint.settings.finalize_strength))
            steps = {ExpertKind.HIGH_NOISE.stage: 0, ExpertKind.LOW_NOISE.stage: refined}
        return GenerationResult(
            request,
            self.model_id,
            job.frames[outcome.video.attempt],
            outcome.video.mp4,
            job.timings,
            steps,
            {**job.cache, "result": outcome.result_cache},
            outcome.physics,
            job.latents[outcome.video.attempt],
        )


@dataclass
class Denoised:
    state: DenoisingState  # after the low-noise phase
    boundary: DenoisingState  # after the high-noise phase (a physics retry starts again here)
    embeddings: PromptEmbeddings
    timings: dict[str, float]
    hits: dict[str, bool | None]
