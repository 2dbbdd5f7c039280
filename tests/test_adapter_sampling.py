"""Adapters that say how they are sampled (adapter.json `steps`, `guidance`, `guidance_2`, `flow_shift`):
a request naming one gets them wherever it sets nothing itself, two that disagree are refused by
name, guidance 1 runs one forward a step, and the flow shift reaches the scheduler and the cache keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cache.keys import boundary_key, result_key
from cluster.pipeline import Pipeline
from contract.errors import RequestInvalid
from contract.experts import ExpertKind
from contract.jobs import JobCreate
from contract.settings import Settings
from contract.storage import OutputStore
from stages.checkpoint import Checkpoint
from stages.denoising import Scheduler
from stages.expert import Expert
from stages.job_store import JobStore
from stages.validation import RequestValidator
from tests.test_adapters import write_adapter

FAST = {"steps": 4, "guidance": 1.0, "guidance_2": 1.0, "flow_shift": 5.0}


def describe(store: Path, name: str, about: dict) -> None:
    (store / name / "adapter.json").write_text(json.dumps(about))


@pytest.fixture(scope="module")
def store(wan22_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for seed, name in enumerate(("fast", "fast8", "plain", "broken-steps")):
        write_adapter(root, name, wan22_dir, list(ExpertKind), seed, rank=2)
    describe(root, "fast", {"description": "4 steps, no guidance", **FAST})
    describe(root, "fast8", {"steps": 8, "guidance": 1.0})
    describe(root, "broken-steps", {"steps": 0})
    return root


@pytest.fixture(scope="module")
def settings(wan22_dir, store, tmp_path_factory) -> Settings:
    return Settings(
        model=wan22_dir,
        cache_dir=tmp_path_factory.mktemp("cache"),
        adapters={"uri": str(store)},
        cache={"enabled": False},
    )


@pytest.fixture(scope="module")
def validator(settings) -> RequestValidator:
    return RequestValidator(settings, Checkpoint.from_settings(settings))


def test_the_store_lists_an_adapter_s_sampling_and_refuses_a_bad_one(validator):
    listing = validator.adapters.listing()
    assert listing["fast"].public()["sampling"] == FAST
    assert "sampling" not in listing["plain"].public()
    broken = listing["broken-steps"].public()
    assert not broken["compatible"] and "adapter.json sets steps" in broken["problem"]
    with pytest.raises(RequestInvalid) as refused:
        validator.request(prompt="a red ball", lora=[{"name": "broken-steps"}])
    assert refused.value.field == "lora.0.name" and "adapter.json sets steps" in refused.value.message


def test_a_request_gets_its_adapter_s_sampling_where_it_sets_nothing(validator):
    request = validator.request(prompt="a red ball", lora=[{"name": "fast"}, {"name": "plain"}])
    assert (request.num_inference_steps, request.guidance_scale, request.guidance_scale_2) == (4, 1.0, 1.0)
    assert request.flow_shift == 5.0 and not request.classifier_free_guidance
    assert request.sampling_from == {
        "num_inference_steps": "fast",
        "guidance_scale": "fast",
        "guidance_scale_2": "fast",
        "flow_shift": "fast",
    }
    # the request's own values win, field by field
    own = validator.request(prompt="a red ball", lora=[{"name": "fast"}], steps=6, guidance=3.5)
    assert (own.num_inference_steps, own.guidance_scale, own.guidance_scale_2, own.flow_shift) == (6, 3.5, 1.0, 5.0)
    assert set(own.sampling_from) == {"guidance_scale_2", "flow_shift"}
    plain = validator.request(prompt="a red ball", lora=[{"name": "plain"}])
    assert plain.sampling_from is None and plain.flow_shift is None and plain.classifier_free_guidance


def test_two_adapters_that_sample_differently_are_refused_by_name(validator):
    with pytest.raises(RequestInvalid) as refused:
        validator.request(prompt="a red ball", lora=[{"name": "fast"}, {"name": "fast8"}])
    assert refused.value.field == "lora"
    assert "'fast' and 'fast8'" in refused.value.message and "num_inference_steps 4 against 8" in refused.value.message
    # the request settles it: then the adapters agree on everything else it leaves to them
    settled = validator.request(prompt="a red ball", lora=[{"name": "fast"}, {"name": "fast8"}], steps=4)
    assert settled.num_inference_steps == 4 and settled.guidance_scale == 1.0


def test_a_final_of_a_fast_shot_samples_as_its_adapter_says(validator):
    preview = validator.request(prompt="a red ball", lora=[{"name": "fast"}], seed=3)
    final = validator.final_of(preview, {}, "video_" + "0" * 32)
    assert final.preset == "final" and final.num_inference_steps == 4 and final.flow_shift == 5.0
    assert final.sampling_from["num_inference_steps"] == "fast"
    # finished by the base low-noise expert: the final preset's steps, guided, the scheduler's own shift
    full = validator.final_of(preview, {"lora": []}, "video_" + "0" * 32)
    assert not full.lora and full.sampling_from is None and full.flow_shift is None
    assert full.num_inference_steps == 20 and full.classifier_free_guidance and full.seed == 3
    # a guidance the shot set itself stays with it
    own = validator.request(prompt="a red ball", lora=[{"name": "fast"}], guidance=2.0)
    assert validator.final_of(own, {"lora": []}, "video_" + "0" * 32).guidance_scale == 2.0


def test_a_final_of_a_fast_shot_starts_on_its_adapter_s_schedule(validator, settings):
    """The final's re-noised start and its solver follow the adapter's flow shift, as its plan does."""
    checkpoint = Checkpoint.from_settings(settings)
    preview = validator.request(prompt="a red ball", lora=[{"name": "fast"}], seed=3)
    final = validator.final_of(preview, {}, "video_" + "0" * 32)
    low = Expert(checkpoint, ExpertKind.LOW_NOISE, batching=False)
    shape = checkpoint.latent_shape(preview.num_frames, preview.height, preview.width)
    start = low.refine_start(final, torch.zeros(shape))
    planned = Scheduler.from_checkpoint(checkpoint).plan(4, checkpoint.boundary_ratio, 5.0)
    assert [round(float(s), 6) for s in start.scheduler["sigmas"][:4]] == [round(s, 6) for s in planned.sigmas]
    assert start.step == planned.refinement_steps(settings.finalize_strength).start


def test_a_scheduler_without_a_flow_shift_refuses_one(wan22_dir, store, tmp_path):
    euler = tmp_path / "model"
    shutil.copytree(wan22_dir, euler)
    (euler / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5.0})
    )
    index = json.loads((euler / "model_index.json").read_text())
    (euler / "model_index.json").write_text(
        json.dumps({**index, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]})
    )
    settings = Settings(model=euler, cache_dir=tmp_path / "cache", adapters={"uri": str(store)})
    validator = RequestValidator(settings, Checkpoint.from_settings(settings))
    with pytest.raises(RequestInvalid) as refused:
        validator.request(prompt="a red ball", lora=[{"name": "fast"}])
    assert refused.value.field == "flow_shift" and "from adapter 'fast'" in refused.value.message
    assert "FlowMatchEulerDiscreteScheduler" in refused.value.message


def test_the_flow_shift_reaches_the_schedule_and_the_cache_keys(validator, settings):
    checkpoint = Checkpoint.from_settings(settings)
    scheduler = Scheduler.from_checkpoint(checkpoint)
    own = scheduler.plan(10, checkpoint.boundary_ratio)
    shifted = scheduler.plan(10, checkpoint.boundary_ratio, 1.0)
    assert shifted.sigmas != own.sigmas and shifted.boundary_step < own.boundary_step  # less time at high noise

    base = validator.request(prompt="a red ball", seed=1)
    moved = base.model_copy(update={"flow_shift": 2.0})
    identity = checkpoint.identity
    assert boundary_key(identity, base) != boundary_key(identity, moved)
    assert result_key(identity, base) != result_key(identity, moved)
    # where a setting came from changes nothing in the video
    labelled = moved.model_copy(update={"sampling_from": {"flow_shift": "fast"}})
    assert result_key(identity, labelled) == result_key(identity, moved)


def test_guidance_1_runs_one_forward_a_step_and_the_job_record_says_so(validator, settings, tmp_path):
    pipe = Pipeline(Checkpoint.from_settings(settings))
    request = validator.request(prompt="a red ball", lora=[{"name": "fast"}], seed=5, cache=False)
    calls = []
    hooks = [
        expert.transformer.register_forward_hook(lambda module, args, out: calls.append(1))
        for expert in (pipe.high_noise_expert, pipe.low_noise_expert)
    ]
    try:
        frames = pipe.generate_frames(request)
    finally:
        for hook in hooks:
            hook.remove()
    assert frames.shape[0] == request.num_frames and len(calls) == 4  # 4 steps, one forward each

    jobs = JobStore(OutputStore(str(tmp_path / "out")))
    job = jobs.create(JobCreate(request=request, model_id="m", steps_total=4)).job
    assert job.forwards_per_step == 1 and job.request["flow_shift"] == 5.0
    assert job.request["sampling_from"]["num_inference_steps"] == "fast"
    guided = validator.request(prompt="a red ball", lora=[{"name": "plain"}])
    assert jobs.create(JobCreate(request=guided, model_id="m", steps_total=10)).job.forwards_per_step == 2


def test_the_flow_shift_is_a_request_field_with_a_range(validator):
    assert validator.request(prompt="a red ball", flow_shift=3).flow_shift == 3.0
    for bad in (0, -1, 1000):
        with pytest.raises(RequestInvalid) as refused:
            validator.request(prompt="a red ball", flow_shift=bad)
        assert refused.value.field == "flow_shift"
