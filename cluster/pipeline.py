"""The stages composed in one process: what `t2v generate`, benchmarks and tests use.

It reads like diffusers' `WanPipeline.__call__`, split where the Serve app splits it:
text encoder -> high-noise expert -> low-noise expert -> decoder (VAE + mp4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cluster.config import Settings
from cluster.request import GenerationRequest
from deployments.checkpoint import HIGH_NOISE, LOW_NOISE, Checkpoint
from deployments.decoder import Decoder
from deployments.denoising import DenoisingState, Scheduler
from deployments.expert import Expert
from deployments.text_encoder import TextEncoder


@dataclass
class GenerationResult:
    request: GenerationRequest
    model_id: str
    frames: np.ndarray  # uint8 (T, H, W, 3)
    mp4: bytes
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    steps: dict[str, int] = field(default_factory=dict)  # denoising steps run per expert


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


class Pipeline:
    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.text_encoder = TextEncoder(checkpoint)
        self.high_noise_expert = Expert(checkpoint, HIGH_NOISE)
        self.low_noise_expert = Expert(checkpoint, LOW_NOISE) if checkpoint.has_low_noise_expert else None
        self.scheduler = Scheduler.from_checkpoint(checkpoint)
        self.decoder = Decoder(checkpoint)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Pipeline":
        return cls(Checkpoint.from_settings(settings))

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    def denoise(
        self, request: GenerationRequest, on_step: Callable[[int], None] | None = None
    ) -> tuple[DenoisingState, dict[str, float]]:
        """Encode the prompt and run both expert phases: the final latent and stage timings."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = now - clock
            clock = now

        # 1. Encode the prompt (and the negative prompt, for classifier-free guidance)
        embeddings = self.text_encoder(request.prompt, request.negative_prompt, request.classifier_free_guidance)
        lap("encode")
        # 2. High-noise phase: timesteps, initial noise, then layout and motion
        #    (every step on a Wan2.1-style checkpoint)
        state = self.high_noise_expert.phase(request, embeddings, on_step=on_step)
        lap("high_noise")
        # 3. Low-noise phase: detail, continuing from the handed-over latent and scheduler state
        if self.low_noise_expert is not None:
            state = self.low_noise_expert.phase(request, embeddings, state, on_step=on_step)
        lap("low_noise")
        return state, timings

    def generate_frames(self, request: GenerationRequest) -> np.ndarray:
        """Float frames in [0, 1] of shape (T, H, W, 3), as `WanPipeline(output_type="np")`."""
        state, _ = self.denoise(request)
        return self.decoder(state.latents)

    def __call__(self, request: GenerationRequest, on_step: Callable[[int], None] | None = None) -> GenerationResult:
        state, timings = self.denoise(request, on_step)
        # 4. Decode, and write the mp4 marked as AI-generated
        video = self.decoder.video(request, state.latents)
        plan = self.scheduler.plan(request.num_inference_steps, self.checkpoint.boundary_ratio)
        steps = {HIGH_NOISE: len(plan.high_noise_steps), LOW_NOISE: len(plan.low_noise_steps)}
        return GenerationResult(request, self.model_id, video.frames, video.mp4, {**timings, **video.timings}, steps)
