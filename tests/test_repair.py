"""Generate, verify, repair: a video below min_physics_score gets its detail phase re-sampled."""

from __future__ import annotations

import torch

from cluster.pipeline import Pipeline
from contract.request import GenerationRequest
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.denoising import DenoisingState


def test_retries_keep_the_best_and_report_every_attempt(wan22_dir):
    settings = Settings(model=wan22_dir)
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    request = GenerationRequest.build(settings, prompt="a red ball", seed=3, min_physics_score=0.99, max_retries=2)
    result = pipeline(request)
    attempts = result.physics.attempts
    assert [a.attempt for a in attempts] == [0, 1, 2]  # noise videos never reach 0.99
    assert len({a.seed for a in attempts}) == 3
    assert result.physics.score == max(a.score for a in attempts)
    assert result.steps["low_noise"] == 3 * 3  # the low-noise phase ran three times

    plain = pipeline(request.model_copy(update={"min_physics_score": None, "max_retries": 0}))
    assert [a.attempt for a in plain.physics.attempts] == [0]
    satisfied = pipeline(request.model_copy(update={"min_physics_score": 0.0}))
    assert len(satisfied.physics.attempts) == 1  # good enough at once: no retry


def test_resample_keeps_the_layout_and_redraws_the_detail(wan22_dir):
    settings = Settings(model=wan22_dir)
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    request = GenerationRequest.build(settings, prompt="a red ball", seed=3)
    denoised = pipeline.denoise(request)
    resampled = pipeline.scheduler.resample(denoised.boundary, seed=99)
    assert isinstance(resampled, DenoisingState) and resampled.step == denoised.boundary.step
    assert resampled.scheduler["lower_order_nums"] == 0 and resampled.scheduler["last_sample"] is None
    assert not torch.equal(resampled.latents, denoised.boundary.latents)
    low = pipeline.low_noise_expert
    again = low.phase(request, denoised.embeddings, denoised.boundary, resample_seed=99)
    other = low.phase(request, denoised.embeddings, denoised.boundary, resample_seed=100)
    assert torch.equal(
        again.latents, low.phase(request, denoised.embeddings, denoised.boundary, resample_seed=99).latents
    )  # a seed repeats
    base = denoised.state.latents
    # Re-sampled from the same boundary: closer to the original than an unrelated video is.
    unrelated = pipeline.denoise(request.model_copy(update={"seed": 4})).state.latents
    assert (again.latents - base).abs().mean() < (unrelated - base).abs().mean()
    assert not torch.equal(again.latents, other.latents)
