"""diffusers' step caches on the experts: they act, they restart clean every phase, and
concurrent phases (a replica's threads) take turns instead of sharing cache state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from contract.errors import RequestInvalid
from contract.experts import ExpertKind
from contract.request import GenerationRequest
from contract.settings import Settings, StepCacheSettings
from stages.checkpoint import Checkpoint
from stages.expert import Expert
from stages.text_encoder import TextEncoder
from stages.validation import RequestValidator
from tests.test_adapter_sampling import FAST, describe
from tests.test_adapters import write_adapter


def expert(wan22_dir, **step_cache) -> Expert:
    settings = Settings(model=wan22_dir, step_cache=StepCacheSettings(**step_cache))
    return Expert(Checkpoint(wan22_dir, settings), ExpertKind.HIGH_NOISE, batching=True)  # batching yields to the cache


@pytest.fixture(scope="module")
def jobs(wan22_dir):
    settings = Settings(model=wan22_dir)
    encoder = TextEncoder(Checkpoint(wan22_dir, settings))
    out = []
    for seed, prompt in enumerate(["a red ball bouncing", "a kite at dusk"]):
        request = GenerationRequest.build(settings, prompt=prompt, seed=seed, num_inference_steps=20)
        out.append((request, encoder(request.prompt, request.negative_prompt, True)))
    return out


@pytest.mark.parametrize(
    "kind, options",
    [("taylorseer", {"cache_interval": 3, "disable_cache_before_step": 2}), ("first_block", {"threshold": 10.0})],
)
def test_step_cache_acts_restarts_clean_and_takes_turns(wan22_dir, jobs, kind, options):
    plain = Expert(Checkpoint(wan22_dir, Settings(model=wan22_dir)), ExpertKind.HIGH_NOISE, batching=False)
    cached = expert(wan22_dir, kind=kind, options=options)
    assert cached.batcher is None  # steps of different requests cannot share a cache's state

    first = [cached.phase(*j).latents for j in jobs]
    reference = [plain.phase(*j).latents for j in jobs]
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(first, reference, strict=False))  # it reused work
    again = [cached.phase(*j).latents for j in jobs]
    assert all((a - b).abs().max() == 0 for a, b in zip(first, again, strict=False))  # each phase starts clean
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda j: cached.phase(*j).latents, jobs))
    assert all((a - b).abs().max() == 0 for a, b in zip(first, together, strict=False))  # concurrent phases took turns


def test_a_step_cache_refuses_a_request_of_fewer_steps_than_it_needs_by_name(wan22_dir, tmp_path):
    write_adapter(tmp_path, "fast", wan22_dir, list(ExpertKind), 0, rank=2)
    describe(tmp_path, "fast", FAST)
    cached = Settings(
        model=wan22_dir,
        adapters={"uri": str(tmp_path)},
        step_cache=StepCacheSettings(kind="first_block", options={"threshold": 0.2}),
    )
    validator = RequestValidator(cached, Checkpoint(wan22_dir, cached))
    with pytest.raises(RequestInvalid) as refused:
        validator.request(prompt="a red ball", lora=[{"name": "fast"}])
    message = refused.value.message
    assert refused.value.field == "num_inference_steps" and "from adapter 'fast'" in message
    assert "step cache (first_block)" in message and "at least 8" in message
    with pytest.raises(RequestInvalid, match="num_inference_steps 3: "):
        validator.request(prompt="a red ball", steps=3)
    assert validator.request(prompt="a red ball", lora=[{"name": "fast"}], steps=8).num_inference_steps == 8
    # the same request on a server without a step cache runs its adapter's 4 steps
    plain = cached.model_copy(update={"step_cache": StepCacheSettings()})
    assert (
        RequestValidator(plain, Checkpoint(wan22_dir, plain))
        .request(prompt="a red ball", lora=[{"name": "fast"}])
        .num_inference_steps
        == 4
    )
