"""The generation request: presets fill what is unset, bad values name their field and range."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.errors import describe_errors
from contract.request import GenerationRequest
from contract.settings import Limits, Settings


def _errors(settings=None, **fields) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        GenerationRequest.build(settings or Settings(), **fields)
    return {e["field"]: e["message"] for e in describe_errors(info.value)}


def test_presets_fill_unset_fields():
    settings = Settings()
    preview = GenerationRequest.build(settings, prompt="a cat")
    assert preview.preset == "preview"
    assert (preview.height, preview.width, preview.num_frames, preview.num_inference_steps) == (64, 64, 17, 10)
    final = GenerationRequest.build(settings, prompt="a cat", preset="final", num_inference_steps=7)
    assert (final.height, final.num_frames, final.num_inference_steps) == (128, 33, 7)
    assert (final.guidance_scale, final.guidance_scale_2) == (4.0, 3.0)
    assert 0 <= final.seed < 2**31  # drawn, and recorded in the request


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"height": 100}, "height", "multiple of 16"),
        ({"width": 4096}, "width", "between 16 and 256"),
        ({"num_frames": 18}, "num_frames", "4k+1"),
        ({"num_frames": 129}, "num_frames", "between 1 and 65"),
        ({"num_inference_steps": 0}, "num_inference_steps", "between 1 and 60"),
        ({"fps": 0}, "fps", "between 1 and 60"),
        ({"guidance_scale": -1}, "guidance_scale", "between 0.0 and 20.0"),
        ({"seed": -3}, "seed", "greater than or equal to 0"),
        ({"preset": "ultra"}, "preset", "one of ['final', 'preview']"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"height": "tall"}, "height", "valid integer"),
    ],
)
def test_invalid_values_name_field_and_range(fields, field, words):
    errors = _errors(**{"prompt": "a cat", **fields})
    assert field in errors and words in errors[field], errors


def test_prompt_checks():
    assert "blank" in _errors(prompt="   ")["prompt"]
    assert "at least 1 character" in _errors(prompt="")["prompt"]
    assert "at most 10 characters" in _errors(Settings(limits=Limits(max_prompt_chars=10)), prompt="x" * 11)["prompt"]


def test_limits_come_from_settings():
    roomy = Settings(limits=Limits(max_height=1024))
    assert GenerationRequest.build(roomy, prompt="a cat", height=720).height == 720
    assert "between 16 and 256" in _errors(prompt="a cat", height=720)["height"]


def test_env_feeds_settings(monkeypatch):
    monkeypatch.setenv("T2V_LIMITS__MAX_STEPS", "5")
    monkeypatch.setenv("T2V_DEFAULT_PRESET", "final")
    settings = Settings()
    assert settings.limits.max_steps == 5 and settings.default_preset == "final"
    assert "between 1 and 5" in _errors(settings, prompt="a", num_inference_steps=6)["num_inference_steps"]


def test_yaml_feeds_settings_and_deployment_overrides_merge(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text(
        "limits: {max_height: 720}\ndeployments:\n  HighNoiseExpert: {num_gpus: 1, max_ongoing_requests: 1}\n"
    )
    settings = Settings.from_yaml(config)
    assert settings.limits.max_height == 720
    high = settings.deployments["HighNoiseExpert"]
    assert (high.num_gpus, high.max_ongoing_requests, high.num_cpus) == (1, 1, 0.5)  # the rest keeps defaults
    assert set(settings.deployments) == {
        "Ingress",
        "JobStore",
        "TextEncoder",
        "HighNoiseExpert",
        "LowNoiseExpert",
        "Decoder",
    }
    monkeypatch.setenv("T2V_DEPLOYMENTS__DECODER__THREADS", "3")  # env names arrive lower-cased
    assert Settings().deployments["Decoder"].threads == 3
    with pytest.raises(ValidationError, match="unknown deployment 'Expert'"):
        Settings(deployments={"Expert": {"num_gpus": 1}})


def test_ids_are_whole_matches(tmp_path):
    from cluster.prompt_table import read_table
    from contract.jobs import new_job_id, valid_job_id

    job_id = new_job_id()
    assert valid_job_id(job_id)
    assert not valid_job_id(job_id + "\n") and not valid_job_id(job_id + "x") and not valid_job_id("x" + job_id)
    table = tmp_path / "rows.jsonl"
    table.write_text('{"id": "row-1.a_b", "prompt": "x"}\n{"id": "abc\\n", "prompt": "x"}\n')
    good, bad = read_table(str(table))[0]
    assert good.id == "row-1.a_b" and good.error is None
    assert bad.error is not None and bad.error.startswith("id:")
