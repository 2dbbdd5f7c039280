"""The stages composed in one process: what `t2v generate`, benchmarks and tests use.

It reads like diffusers' `WanPipeline.__call__`, split where the Serve app splits it:
text encoder -> high-noise expert -> low-noise expert -> decoder (VAE, mp4, physics score).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cache.keys import result_key
from cache.store import LatentCache
from cluster.config import Settings
from cluster.request import GenerationRequest
from deployments.checkpoint import HIGH_NOISE, LOW_NOISE, Checkpoint
from deployments.decoder import Decoder
from deployments.denoising import DenoisingState, Scheduler
from deployments.expert import Expert
from deployments.text_encoder import PromptEmbeddings, TextEncoder


@dataclass
class GenerationResult:
    request: GenerationRequest
    model_id: str
    frames: np.ndarray | None  # uint8 (T, H, W, 3); None when the mp4 came from the result cache
    mp4: bytes
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    steps: dict[str, int] = field(default_factory=dict)  # denoising steps run per expert
    cache: dict[str, bool | None] = field(default_factory=dict)  # level -> hit (None: not used)
    physics: dict | None = None  # monitoring.physics.score_video of the frames


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
    def __init__(self, checkpoint: Checkpoint, cache: LatentCache | None = None):
        self.checkpoint = checkpoint
        self.cache = cache
        self.text_encoder = TextEncoder(checkpoint, cache)
        # One request at a time here: nothing to batch with.
        self.high_noise_expert = Expert(checkpoint, HIGH_NOISE, batching=False)
        self.low_noise_expert = Expert(checkpoint, LOW_NOISE, batching=False) if checkpoint.has_low_noise_expert else None
        self.scheduler = Scheduler.from_checkpoint(checkpoint)
        self.decoder = Decoder(checkpoint)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Pipeline":
        return cls(Checkpoint.from_settings(settings), LatentCache.from_settings(settings))

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    def denoise(self, request: GenerationRequest, on_step: Callable[[int], None] | None = None) -> "Denoised":
        """Encode the prompt and run both expert phases."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = now - clock
            clock = now

        # 1. Encode the prompt (and the negative prompt, for classifier-free guidance);
        #    a template request's high-noise phase sees its base prompt instead.
        guidance = request.classifier_free_guidance
        embeddings = self.text_encoder(request.prompt, request.negative_prompt, guidance, request.cache)
        high_embeddings = embeddings
        if request.template_mode:
            high_embeddings = self.text_encoder(request.base_prompt, request.negative_prompt, guidance)
        lap("encode")
        # 2. High-noise phase: timesteps, initial noise, then layout and motion (every step
        #    on a Wan2.1-style checkpoint); shared by a template's requests through the cache
        boundary, boundary_hit = self.high_noise_expert.shared_phase(request, high_embeddings, self.cache, on_step)
        lap("high_noise")
        # 3. Low-noise phase: detail, continuing from the handed-over latent and scheduler state
        state = boundary
        if self.low_noise_expert is not None:
            state = self.low_noise_expert.phase(request, embeddings, boundary, on_step=on_step)
        lap("low_noise")
        embeddings_hit = embeddings.cache_hit if self.cache is not None and request.cache else None
        return Denoised(state, boundary, embeddings, timings, {"embeddings": embeddings_hit, "boundary": boundary_hit})

    def generate_frames(self, request: GenerationRequest) -> np.ndarray:
        """Float frames in [0, 1] of shape (T, H, W, 3), as `WanPipeline(output_type="np")`."""
        return self.decoder(self.denoise(request).state.latents)

    def __call__(self, request: GenerationRequest, on_step: Callable[[int], None] | None = None) -> GenerationResult:
        # 0. An identical request already made: its mp4, no compute
        key = result_key(self.checkpoint, request) if self.cache is not None and request.cache else None
        if key is not None and (cached := self.cache.get("result", key)) is not None:
            return GenerationResult(request, self.model_id, None, cached["mp4"], cache={"result": True},
                                    physics=cached["physics"])
        denoised = self.denoise(request, on_step)
        # 4. Decode, write the mp4 marked as AI-generated, score its physics
        video = self.decoder.video(request, denoised.state.latents)
        # 5. Generate, verify, repair: below min_physics_score, re-sample the detail phase
        attempts = [{"attempt": 0, "seed": request.seed, "score": video.physics["score"]}]
        for attempt in range(1, request.max_retries + 1):
            if self.low_noise_expert is None or video.physics["score"] >= (request.min_physics_score or 0):
                break
            seed = request.resample_seed(attempt)
            state = self.low_noise_expert.phase(request, denoised.embeddings, denoised.boundary, on_step, seed)
            candidate = self.decoder.video(request, state.latents)
            attempts.append({"attempt": attempt, "seed": seed, "score": candidate.physics["score"]})
            if candidate.physics["score"] > video.physics["score"]:
                video = candidate
        physics = {**video.physics, "attempts": attempts}
        if key is not None:
            self.cache.put("result", key, {"mp4": video.mp4, "physics": physics})
        plan = self.scheduler.plan(request.num_inference_steps, self.checkpoint.boundary_ratio)
        steps = {HIGH_NOISE: len(plan.high_noise_steps), LOW_NOISE: len(plan.low_noise_steps) * len(attempts)}
        return GenerationResult(
            request, self.model_id, video.frames, video.mp4, {**denoised.timings, **video.timings}, steps,
            {**denoised.hits, "result": False if key is not None else None}, physics,
        )


@dataclass
class Denoised:
    state: DenoisingState  # after the low-noise phase
    boundary: DenoisingState  # after the high-noise phase (a physics retry starts again here)
    embeddings: PromptEmbeddings
    timings: dict[str, float]
    hits: dict[str, bool | None]
