"""The staged composition equals diffusers' WanPipeline, and each expert runs its own steps."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from cluster.pipeline import Pipeline, wan_pipeline_arguments
from contract.request import GenerationRequest
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.denoising import DenoisingState, Scheduler, prepare_latents


def _diffusers_frames(checkpoint: Checkpoint, request: GenerationRequest) -> np.ndarray:
    pipe = WanPipeline.from_pretrained(checkpoint.path)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**wan_pipeline_arguments(request, checkpoint)).frames[0]


@pytest.mark.parametrize("checkpoint_fixture, two_experts", [("wan22_dir", True), ("wan21_dir", False)])
@pytest.mark.parametrize("prompt", ["a red ball bouncing on a table", "一只橘猫在草地上奔跑"])
def test_staged_equals_wan_pipeline(request, checkpoint_fixture, two_experts, prompt):
    model_dir = request.getfixturevalue(checkpoint_fixture)
    settings = Settings(model=model_dir)
    generation = GenerationRequest.build(settings, prompt=prompt, seed=1234, negative_prompt="blurry, static")
    checkpoint = Checkpoint(model_dir, settings)
    assert checkpoint.has_low_noise_expert is two_experts
    frames = Pipeline(checkpoint).generate_frames(generation)
    expected = _diffusers_frames(checkpoint, generation)
    assert frames.shape == expected.shape == (generation.num_frames, generation.height, generation.width, 3)
    assert np.abs(frames - expected).max() <= 1e-4
    assert frames.std() > 0.01  # not a blank video that would match trivially


def _count_calls(module: torch.nn.Module, calls: list[int]):
    return module.register_forward_hook(lambda mod, args, kwargs_or_out: calls.append(1))


def test_each_expert_runs_exactly_its_side_of_the_boundary(wan22_dir):
    settings = Settings(model=wan22_dir)
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    generation = GenerationRequest.build(settings, prompt="a dog", seed=1, num_inference_steps=12)
    timestep_seen = {"high": [], "low": []}
    hooks = [
        pipeline.high_noise_expert.transformer.register_forward_hook(
            lambda m, args, kwargs, out: timestep_seen["high"].append(int(kwargs["timestep"][0])), with_kwargs=True
        ),
        pipeline.low_noise_expert.transformer.register_forward_hook(
            lambda m, args, kwargs, out: timestep_seen["low"].append(int(kwargs["timestep"][0])), with_kwargs=True
        ),
    ]
    try:
        steps = pipeline(generation).steps
    finally:
        for h in hooks:
            h.remove()

    plan, _ = pipeline.scheduler.start(12, 0.875)
    boundary_t = 0.875 * 1000
    high_t = [t for t in plan.timesteps if t >= boundary_t]
    low_t = [t for t in plan.timesteps if t < boundary_t]
    assert high_t and low_t
    # Two forwards per step (classifier-free guidance: conditional and unconditional).
    assert timestep_seen["high"] == [t for t in high_t for _ in range(2)]
    assert timestep_seen["low"] == [t for t in low_t for _ in range(2)]
    assert steps == {"high_noise": len(high_t), "low_noise": len(low_t)}


def test_single_expert_runs_every_step(wan21_dir):
    settings = Settings(model=wan21_dir)
    pipeline = Pipeline(Checkpoint(wan21_dir, settings))
    assert pipeline.low_noise_expert is None
    steps = pipeline(GenerationRequest.build(settings, prompt="a dog", seed=1)).steps
    assert steps == {"high_noise": 10}


def test_scheduler_state_survives_a_process_boundary(wan22_dir):
    """The handover object pickles (as Ray will send it) and resuming from it changes nothing."""
    settings = Settings(model=wan22_dir)
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    generation = GenerationRequest.build(settings, prompt="waves on a beach", seed=5)
    embeddings = pipeline.text_encoder(generation.prompt, generation.negative_prompt)
    plan, scheduler_state = pipeline.scheduler.start(generation.num_inference_steps, 0.875)
    shape = pipeline.checkpoint.latent_shape(generation.num_frames, generation.height, generation.width)
    start = DenoisingState(prepare_latents(shape, generation.seed), scheduler_state, 0)

    def run(handover):
        state = pipeline.high_noise_expert(start, embeddings, 4.0, plan.high_noise_steps)
        state = handover(state)
        assert state.step == plan.boundary_step
        return pipeline.low_noise_expert(state, embeddings, 3.0, plan.low_noise_steps).latents

    direct = run(lambda s: s)
    via_pickle = run(lambda s: pickle.loads(pickle.dumps(s)))
    assert torch.equal(direct, via_pickle)
    # UniPC's history is part of the state: dropping it changes the result.
    history_lost = run(
        lambda s: DenoisingState(
            s.latents, Scheduler.capture(_fresh_at_step(pipeline.scheduler, plan.num_steps, s.step)), s.step
        )
    )
    assert not torch.equal(direct, history_lost)


def _fresh_at_step(scheduler: Scheduler, num_steps: int, step: int):
    fresh = scheduler.scheduler_class.from_config(scheduler.config)
    fresh.set_timesteps(num_steps, device="cpu")
    fresh._step_index = step
    return fresh


def test_expert_refuses_a_state_from_another_step(wan22_dir):
    settings = Settings(model=wan22_dir)
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    embeddings = pipeline.text_encoder("a dog", "")
    plan, scheduler_state = pipeline.scheduler.start(10, 0.875)
    state = DenoisingState(prepare_latents((1, 16, 5, 8, 8), 0), scheduler_state, 0)
    with pytest.raises(ValueError, match="start at step"):
        pipeline.low_noise_expert(state, embeddings, 3.0, plan.low_noise_steps)


def test_concurrent_decodes_equal_sequential_ones(wan22_dir):
    """A Serve replica decodes requests from several threads; the VAE's per-decode feature
    cache must not leak between them (it did: a 17-frame video came out with 20 frames)."""
    from concurrent.futures import ThreadPoolExecutor

    from stages.decoder import Decoder

    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    decoder = Decoder(checkpoint)
    latents = [prepare_latents(checkpoint.latent_shape(17, 64, 64), seed) for seed in range(4)]
    sequential = [decoder(x) for x in latents]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(decoder, latents))
    for one, other in zip(sequential, concurrent, strict=False):
        assert one.shape == other.shape == (17, 64, 64, 3)
        assert np.array_equal(one, other)
