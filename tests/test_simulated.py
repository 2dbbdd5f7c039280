"""The simulated accelerator (`device: sim`): the real stages and their code paths, with the cost
model's seconds charged in place of model compute, on stand-in latents."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cluster.pipeline import Pipeline
from contract.experts import ExpertKind
from contract.request import GenerationRequest
from contract.settings import BatchingSettings, Limits, Settings, SimSettings
from sim.cost_model import CostModel
from sim.gpu import STAND_IN_LATENT, SimulatedTransformer, standing_for
from stages.checkpoint import Checkpoint
from stages.denoising import DenoisingState
from stages.expert import Expert
from stages.text_encoder import TextEncoder
from stages.video import probe_mp4

# 1 simulated second = 10 us: a 720p video (~1,000 simulated s) takes ~10 ms of waiting
SIM = SimSettings(gpu="h100", time_scale=1e-5)
LIMITS = Limits(max_height=1280, max_width=1280, max_frames=81)


def sim_settings(wan22_dir, tmp_path, **fields) -> Settings:
    fields = {"sim": SIM, "limits": LIMITS, **fields}
    return Settings(model=wan22_dir, cache_dir=tmp_path / "cache", device="sim", **fields)


def request_720p(settings: Settings, **fields) -> GenerationRequest:
    return GenerationRequest.build(
        settings,
        **{
            "prompt": "a red ball bouncing on the grass",
            "height": 720,
            "width": 1280,
            "num_frames": 81,
            "num_inference_steps": 40,
            "seed": 3,
            **fields,
        },
    )


def test_a_720p_video_takes_the_cost_model_s_seconds_per_stage(wan22_dir, tmp_path):
    settings = sim_settings(wan22_dir, tmp_path, cache={"enabled": False})
    pipeline = Pipeline.from_settings(settings)
    # no weights of either expert or of the VAE were loaded: the GPUs are simulated
    assert isinstance(pipeline.high_noise_expert.transformer, SimulatedTransformer)
    assert not hasattr(pipeline.decoder, "vae")
    with pytest.raises(RuntimeError, match="no VAE"):
        pipeline.decoder(torch.zeros(STAND_IN_LATENT))
    cost = CostModel("h100")
    loaded = pipeline.simulated_seconds()
    assert loaded["high_noise"] == pytest.approx(cost.load_seconds("expert"))
    assert loaded["encode"] == pytest.approx(cost.load_seconds("text_encoder"))

    request = request_720p(settings)
    result = pipeline(request)
    spent = {k: v - loaded[k] for k, v in pipeline.simulated_seconds().items()}

    plan = pipeline.plan(request)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, 720, 1280, 81)
    assert spent["high_noise"] == pytest.approx(len(plan.high_noise_steps) * step)
    assert spent["low_noise"] == pytest.approx(len(plan.low_noise_steps) * step)
    assert spent["decode"] == pytest.approx(cost.decode_seconds(720, 1280, 81))
    assert spent["encode"] == pytest.approx(2 * cost.encode_seconds(guidance=False))  # the prompt, the negative
    # the whole video, as the cost model calibrated to Wan2.2's 1041.5 s on one H100 says
    assert sum(spent.values()) == pytest.approx(cost.video_seconds(720, 1280, 81, 40), rel=0.01)

    # the stand-in video keeps the request's length and frame rate; its physics score says "no evidence"
    video = probe_mp4(result.mp4)
    assert video["frames"] == 81 and (video["width"], video["height"]) == (16, 16)
    assert result.physics.score == 0.5


def test_an_unguided_few_step_video_is_charged_one_forward_a_step(wan22_dir, tmp_path):
    """A distilled adapter's sampling (4 steps, guidance 1): no unconditional pass, no negative prompt."""
    settings = sim_settings(wan22_dir, tmp_path, cache={"enabled": False})
    pipeline = Pipeline.from_settings(settings)
    loaded = pipeline.simulated_seconds()
    request = request_720p(settings, num_inference_steps=4, guidance_scale=1.0, guidance_scale_2=1.0)
    pipeline(request)
    spent = {k: v - loaded[k] for k, v in pipeline.simulated_seconds().items()}
    cost = CostModel("h100")
    one_forward = cost.step_seconds(ExpertKind.HIGH_NOISE, 720, 1280, 81, guidance=False)
    assert spent["high_noise"] + spent["low_noise"] == pytest.approx(4 * one_forward)
    assert spent["encode"] == pytest.approx(cost.encode_seconds(guidance=False))
    assert sum(spent.values()) == pytest.approx(cost.video_seconds(720, 1280, 81, 4, guidance=False), rel=0.01)


def test_a_simulated_expert_in_fp8_is_charged_the_fp8_cost(wan22_dir, tmp_path):
    """The `quantization` setting reaches the simulated GPU of each expert: FP8 weights on the
    high-noise expert, bf16 on the low-noise one."""
    settings = sim_settings(wan22_dir, tmp_path, cache={"enabled": False}, quantization={"high_noise": "fp8"})
    pipeline = Pipeline.from_settings(settings)
    loaded = pipeline.simulated_seconds()
    pipeline(request_720p(settings, num_inference_steps=4, guidance_scale=1.0, guidance_scale_2=1.0))
    spent = {k: v - loaded[k] for k, v in pipeline.simulated_seconds().items()}
    fp8, bf16 = CostModel("h100", quantization="fp8"), CostModel("h100")
    forward = {c: c.step_seconds(ExpertKind.HIGH_NOISE, 720, 1280, 81, guidance=False) for c in (fp8, bf16)}
    high_steps = round(spent["high_noise"] / forward[fp8])
    assert spent["high_noise"] == pytest.approx(high_steps * forward[fp8])
    assert spent["low_noise"] == pytest.approx((4 - high_steps) * forward[bf16])
    assert 0 < high_steps < 4
    assert loaded["high_noise"] == pytest.approx(fp8.load_seconds()) and loaded["low_noise"] == pytest.approx(
        bf16.load_seconds()
    )


def test_a_simulated_expert_of_eight_ranks_takes_the_cost_model_s_parallel_time(wan22_dir, tmp_path):
    """`parallel.ulysses: 8`: each step takes 1/(8 x efficiency) of one GPU's time, and counts
    eight GPUs' seconds."""
    from contract.settings import ParallelSettings

    settings = sim_settings(wan22_dir, tmp_path, cache={"enabled": False})
    parallel = Pipeline.from_settings(settings.with_parallel_experts(ParallelSettings(ulysses=8)))
    loaded = parallel.simulated_seconds()
    request = request_720p(settings)
    parallel(request)
    spent = {k: v - loaded[k] for k, v in parallel.simulated_seconds().items()}

    cost = CostModel("h100")
    plan = parallel.plan(request)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, 720, 1280, 81) / (8 * cost.parallel_efficiency(8))
    assert spent["high_noise"] == pytest.approx(len(plan.high_noise_steps) * step)
    assert spent["low_noise"] == pytest.approx(len(plan.low_noise_steps) * step)
    assert parallel.high_noise_expert.transformer.gpu.gpus == 8


def test_a_simulated_expert_of_cfg_groups_runs_a_guided_step_s_halves_at_once(wan22_dir, tmp_path):
    """`parallel: {ulysses: 4, cfg: 2}`: a guided step's two forwards go out as one call, each
    group of four runs its half, so the step takes one forward's parallel time over the CFG
    efficiency, and counts eight GPUs' seconds."""
    from contract.settings import ParallelSettings
    from sim.cost_model import CFG_PARALLEL_EFFICIENCY

    settings = sim_settings(wan22_dir, tmp_path, cache={"enabled": False})
    parallel = Pipeline.from_settings(settings.with_parallel_experts(ParallelSettings(ulysses=4, cfg=2)))
    loaded = parallel.simulated_seconds()
    request = request_720p(settings)
    parallel(request)
    spent = {k: v - loaded[k] for k, v in parallel.simulated_seconds().items()}

    cost = CostModel("h100")
    plan = parallel.plan(request)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, 720, 1280, 81) / cost.parallel_speedup(4, 2)
    assert cost.step_seconds(ExpertKind.HIGH_NOISE, 720, 1280, 81) == pytest.approx(
        2 * cost.forward_seconds(720, 1280, 81)
    )
    assert step == pytest.approx(
        cost.forward_seconds(720, 1280, 81) / (4 * cost.parallel_efficiency(4) * CFG_PARALLEL_EFFICIENCY)
    )
    assert spent["high_noise"] == pytest.approx(len(plan.high_noise_steps) * step)
    assert spent["low_noise"] == pytest.approx(len(plan.low_noise_steps) * step)
    assert parallel.high_noise_expert.transformer.gpu.gpus == 8


def test_stand_in_latents_carry_the_video_they_stand_for(wan22_dir, tmp_path):
    settings = sim_settings(wan22_dir, tmp_path)
    checkpoint = Checkpoint.from_settings(settings)
    assert checkpoint.simulated and checkpoint.identity.device == "sim"  # never shares a real model's cache
    encoder = TextEncoder(checkpoint)
    expert = Expert(checkpoint, ExpertKind.HIGH_NOISE, batching=False)
    request = request_720p(settings)
    embeddings = encoder(request.prompt, request.negative_prompt, request.classifier_free_guidance)
    state = expert.phase(request, embeddings)
    assert tuple(state.latents.shape) == STAND_IN_LATENT and state.stands_for == (81, 720, 1280)
    assert DenoisingState.from_plain(state.as_plain()).stands_for == (81, 720, 1280)  # through the cache
    low = Expert(checkpoint, ExpertKind.LOW_NOISE, batching=False)
    assert low.phase(request, embeddings, state).stands_for == (81, 720, 1280)
    assert low.phase(request, embeddings, state, resample_seed=9).stands_for == (81, 720, 1280)  # a repair

    with pytest.raises(RuntimeError, match="outside standing_for"):
        expert.transformer(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1), None, return_dict=False)
    with standing_for((17, 64, 64)):
        (out,) = expert.transformer(torch.ones(2, 1, 1, 2, 2), torch.zeros(2), None, return_dict=False)
    assert torch.equal(out, torch.zeros(2, 1, 1, 2, 2))


def test_a_batch_costs_less_than_its_members_where_the_gpu_is_not_saturated(wan22_dir, tmp_path):
    batching = BatchingSettings(enabled=True, max_batch_size=4, max_wait_ms=500)
    settings = sim_settings(wan22_dir, tmp_path, batching=batching)
    checkpoint = Checkpoint.from_settings(settings)
    encoder = TextEncoder(checkpoint)
    expert = Expert(checkpoint, ExpertKind.HIGH_NOISE)
    gpu = expert.transformer.gpu
    cost = gpu.cost
    requests = [
        GenerationRequest.build(settings, prompt=f"a ball number {i}", num_inference_steps=10, seed=i) for i in range(4)
    ]  # the preview size: a forward is mostly the fixed cost of streaming the weights
    jobs = [(r, encoder(r.prompt, r.negative_prompt, True)) for r in requests]
    before = gpu.seconds
    start = threading.Barrier(len(jobs))

    def run(job):
        start.wait()
        return expert.phase(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        states = list(pool.map(run, jobs))
    spent = gpu.seconds - before
    frames, height, width = size = (requests[0].num_frames, requests[0].height, requests[0].width)
    # each step of n guided requests is one forward of 2n samples, charged as such
    expected = sum(cost.forward_seconds(height, width, frames, batch=2 * n) for n in expert.batcher.batch_sizes)
    assert spent == pytest.approx(expected)
    assert max(expert.batcher.batch_sizes) > 1
    alone = len(requests) * states[0].step * cost.step_seconds(ExpertKind.HIGH_NOISE, height, width, frames)
    assert spent < alone
    assert all(s.stands_for == size for s in states)


def test_a_template_s_shared_phase_is_charged_once(wan22_dir, tmp_path):
    settings = sim_settings(wan22_dir, tmp_path)
    pipeline = Pipeline.from_settings(settings)
    products = ["a red sneaker", "a blue mug"]
    spent = []
    for product in products:
        before = pipeline.high_noise_expert.transformer.gpu.seconds
        result = pipeline(
            request_720p(settings, prompt=None, seed=None, template="product_showcase", slots={"product": product})
        )
        spent.append(pipeline.high_noise_expert.transformer.gpu.seconds - before)
        assert result.mp4
    assert spent[0] > 100 and spent[1] == 0.0  # the second read the boundary latent from the cache


def test_sim_settings_come_from_the_environment(monkeypatch, wan22_dir):
    monkeypatch.setenv("T2V_DEVICE", "sim")
    monkeypatch.setenv("T2V_SIM__GPU", "l40s")
    monkeypatch.setenv("T2V_SIM__TIME_SCALE", "0.01")
    settings = Settings(model=wan22_dir)
    assert settings.device == "sim" and settings.sim.gpu == "l40s" and settings.sim.time_scale == 0.01
    assert Checkpoint.from_settings(settings).simulated
    monkeypatch.setenv("T2V_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        Settings(model=wan22_dir)


def test_the_stand_in_video_is_grey_frames_of_the_request_s_length():
    from sim.gpu import stand_in_frames

    frames = stand_in_frames(33)
    assert frames.shape == (33, 16, 16, 3) and frames.dtype == np.uint8 and (frames == 128).all()


def test_the_simulated_schedule_is_wan22_s(wan22_dir, tmp_path):
    settings = sim_settings(wan22_dir, tmp_path)
    plan = Pipeline.from_settings(settings).plan(request_720p(settings))
    assert (len(plan.high_noise_steps), len(plan.low_noise_steps)) == (26, 14)  # shift 12, boundary 0.875
    own = sim_settings(wan22_dir, tmp_path, sim=SimSettings(time_scale=1e-5, flow_shift=None))
    shift = Checkpoint.from_settings(own).scheduler_config()["flow_shift"]
    assert shift == Checkpoint(wan22_dir, Settings(model=wan22_dir)).scheduler_config()["flow_shift"]  # the model's


def test_a_simulated_gpu_computes_one_thing_at_a_time():
    from sim.gpu import SimulatedGpu

    gpu = SimulatedGpu(SimSettings(time_scale=1.0), "high_noise")
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(gpu.charge, [0.2, 0.2]))
    assert time.monotonic() - start >= 0.4  # queued, not side by side (a lower bound: never flaky)
    assert gpu.seconds == pytest.approx(0.4)


@pytest.mark.parametrize(("gpu", "swaps"), [("h100", 0), ("l40s", 3)])
def test_co_located_experts_swap_only_where_the_gpu_cannot_hold_both(gpu, swaps):
    """One GPU running both experts (co-located placement): an H100-80GB holds the two, an
    L40S-48GB brings in the other expert's weights at every change of phase."""
    from sim.cost_model import CostModel
    from sim.gpu import SimulatedGpu

    sim = SimSettings(gpu=gpu, time_scale=1e-9)
    shared = SimulatedGpu(sim, "experts")
    for expert in ("high_noise", "high_noise", "low_noise", "low_noise", "high_noise", "low_noise"):
        shared.charge(10.0, stage=expert, expert=expert)
    assert shared.swaps == swaps
    assert shared.seconds == pytest.approx(60.0 + swaps * CostModel(gpu).swap_seconds())
    alone = SimulatedGpu(sim, "low_noise")  # an expert on a GPU of its own never swaps
    for _ in range(3):
        alone.charge(10.0, stage="low_noise", expert="low_noise")
    assert alone.swaps == 0
