"""The stages composed in one process: what `t2v generate`, batch fallbacks and tests use.

It reads like diffusers' `WanPipeline.__call__`, split where the Serve app splits it:
text encoder -> high-noise expert -> low-noise expert -> decoder -> mp4.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cluster.config import Settings
from cluster.request import GenerationRequest
from deployments.checkpoint import HIGH_NOISE, LOW_NOISE, Checkpoint
from deployments.decoder import Decoder, to_uint8
from deployments.denoising import DenoisingState, Scheduler, prepare_latents
from deployments.expert import Expert
from deployments.text_encoder import TextEncoder
from deployments.video import encode_mp4, provenance


@dataclass
class GenerationResult:
    request: GenerationRequest
    model_id: str
    frames: np.ndarray  # uint8 (T, H, W, 3)
    mp4: bytes
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    steps: dict[str, int] = field(default_factory=dict)  # denoising steps run per expert


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

    def generate_frames(
        self, request: GenerationRequest, on_step: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, dict[str, float], dict[str, int]]:
        """Float frames in [0, 1], (T, H, W, 3), plus stage timings and steps per expert."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = now - clock
            clock = now

        # 1. Encode the prompt (and the negative prompt, for classifier-free guidance)
        guidance = request.guidance_scale > 1.0
        embeddings = self.text_encoder(request.prompt, request.negative_prompt, guidance)
        lap("encode")

        # 2. Prepare timesteps and split them at the MoE boundary
        plan, scheduler_state = self.scheduler.start(request.num_inference_steps, self.checkpoint.boundary_ratio)

        # 3. Prepare latents
        shape = self.checkpoint.latent_shape(request.num_frames, request.height, request.width)
        state = DenoisingState(prepare_latents(shape, request.seed), scheduler_state, step=0)

        # 4. High-noise phase: layout and motion (every step on a Wan2.1-style checkpoint)
        state = self.high_noise_expert(state, embeddings, request.guidance_scale, plan.high_noise_steps, on_step)
        lap("high_noise")

        # 5. Low-noise phase: detail
        if plan.low_noise_steps:
            state = self.low_noise_expert(state, embeddings, request.guidance_scale_2, plan.low_noise_steps, on_step)
        lap("low_noise")

        # 6. Decode
        frames = self.decoder(state.latents)
        lap("decode")
        steps = {HIGH_NOISE: len(plan.high_noise_steps), LOW_NOISE: len(plan.low_noise_steps)}
        return frames, timings, steps

    def __call__(self, request: GenerationRequest, on_step: Callable[[int], None] | None = None) -> GenerationResult:
        frames, timings, steps = self.generate_frames(request, on_step)
        # 7. Write the mp4, marked as AI-generated
        start = time.perf_counter()
        frames = to_uint8(frames)
        mp4 = encode_mp4(frames, request.fps, provenance(self.model_id, request.seed, request.prompt))
        timings["mp4"] = time.perf_counter() - start
        return GenerationResult(request, self.model_id, frames, mp4, timings, steps)
