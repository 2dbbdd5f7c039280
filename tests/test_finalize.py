"""Preview -> final of the same shot: the preview's latent, upsampled and re-noised part way, is
finished by the low-noise expert alone. It keeps the preview's object, colour and path where a
plain final with the same seed does not; on Serve, `from` and `/finalize` and their errors."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from bench.quality import prompts
from cluster.pipeline import Pipeline
from contract.errors import RequestInvalid
from contract.settings import Settings
from world.reading import read_clip, shot_difference

# Mean distance of the tracked object from where the preview has it, frame by frame, in frame
# heights: what "keeps the shot" means here (BENCHMARKS.md: ~0.08 at strength 0.6, a plain final ~0.24).
PATH_TOLERANCE = 0.12


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Pipeline:
    """The shipped trained default model: its videos have an object to track."""
    return Pipeline.from_settings(Settings(cache_dir=tmp_path_factory.mktemp("cache"), cache={"enabled": False}))


def test_the_final_of_a_shot_keeps_the_previews_object_colour_and_path(trained):
    moving = [(attrs, prompt, seed) for attrs, prompt, seed in prompts("en", 8) if attrs["motion"] != "stays still"]
    kept, plain = [], []
    for _, prompt, seed in moving[:3]:
        preview = trained(trained.validator.body({"prompt": prompt, "seed": seed}))
        final = trained.final_of(preview)
        # the shot's frames and fps, the final preset's size; only the low-noise expert ran
        assert final.frames.shape == (17, 128, 128, 3) and final.request.from_video == "local"
        assert final.steps["high_noise"] == 0 and 0 < final.steps["low_noise"] < 20
        same_seed = trained(final.request.model_copy(update={"from_video": None}))
        seen = read_clip(preview.frames)
        kept.append(shot_difference(seen, read_clip(final.frames)))
        plain.append(shot_difference(seen, read_clip(same_seed.frames)))
    assert all(k["color"] and k["object"] for k in kept), kept
    assert np.mean([k["path"] for k in kept]) <= PATH_TOLERANCE, kept
    assert np.mean([p["path"] for p in plain]) > 1.5 * np.mean([k["path"] for k in kept]), (kept, plain)


def test_the_refinement_starts_at_the_strengths_noise_level_and_never_before_the_boundary(trained):
    plan = trained.plan(trained.validator.body({"prompt": "a ball", "preset": "final"}))
    for strength in (0.2, 0.6, 0.8, 1.0):
        steps = plan.refinement_steps(strength)
        assert steps.stop == plan.num_steps and steps.start >= plan.boundary_step
        if plan.boundary_step < steps.start < plan.num_steps - 1:
            assert plan.sigmas[steps.start] <= strength < plan.sigmas[steps.start - 1]
    assert plan.refinement_steps(1.0).start == plan.boundary_step  # the high-noise phase is always the preview's
    assert 1 <= len(plan.refinement_steps(0.05)) < len(plan.refinement_steps(0.6)) < len(plan.refinement_steps(0.8))


def test_a_final_keeps_what_the_shot_is_and_refuses_changing_it(trained):
    preview = trained(trained.validator.body({"prompt": "a red ball bounces on grass", "seed": 4, "steps": 4}))
    with pytest.raises(RequestInvalid) as refused:
        trained.final_of(preview, prompt="a blue box")
    assert refused.value.field == "prompt" and "keeps its preview's prompt" in refused.value.message
    request = trained.validator.final_of(preview.request, {"size": "96x96", "steps": 12}, "video_x")
    assert (request.width, request.height, request.num_inference_steps) == (96, 96, 12)
    assert (request.seed, request.prompt, request.num_frames) == (4, preview.request.prompt, 17)
    with pytest.raises(ValueError, match="needs its preview's latents"):
        trained(request)


# -- on Serve ------------------------------------------------------------------------------------


def _wait(http: httpx.Client, video_id: str) -> dict:
    deadline = time.monotonic() + 180
    while (job := http.get(f"/v1/videos/{video_id}").json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    return job


def test_from_and_finalize_make_the_final_of_a_finished_preview(serve_app):
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=120) as http:
        preview = http.post("/v1/videos", json={"prompt": "a red ball bounces on grass", "seed": 7, "steps": 4})
        preview_id = preview.raise_for_status().json()["id"]
        early = http.post("/v1/videos", json={"from": preview_id})
        if early.status_code == 409:  # still running: the final waits for a finished preview
            assert early.json()["error"]["code"] == "video_not_ready"
        assert _wait(http, preview_id)["status"] == "completed"

        final = _wait(http, http.post("/v1/videos", json={"from": preview_id}).raise_for_status().json()["id"])
        assert final["status"] == "completed" and final["size"] == "128x128", final
        assert final["request"]["from_video"] == preview_id and final["request"]["num_frames"] == 17
        assert final["request"]["seed"] == 7, str(final["request"])
        assert final["steps_done"] == final["steps_total"] < 20, final
        assert "high_noise" not in {span["stage"] for span in final["trace"]}  # the preview's layout stands
        assert http.get(f"/v1/videos/{final['id']}/content").content[4:8] == b"ftyp"

        again = http.post(f"/v1/videos/{preview_id}/finalize", json={"steps": 12})
        assert _wait(http, again.raise_for_status().json()["id"])["request"]["num_inference_steps"] == 12
        bare = http.post(f"/v1/videos/{preview_id}/finalize")  # no body: the final preset
        assert _wait(http, bare.raise_for_status().json()["id"])["status"] == "completed"

        # the same preview again is a result-cache hit: it can be finalized all the same
        body = {"prompt": "a red ball bounces on grass", "seed": 7, "steps": 4}
        hit = _wait(http, http.post("/v1/videos", json=body).raise_for_status().json()["id"])
        assert hit["cache"]["result"] is True, hit["cache"]
        final_of_hit = http.post(f"/v1/videos/{hit['id']}/finalize")
        assert final_of_hit.status_code == 202, final_of_hit.text
        assert _wait(http, final_of_hit.json()["id"])["status"] == "completed"

        template = {"template": "product_showcase", "slots": {"product": "a mug"}, "steps": 4}
        shot = _wait(http, http.post("/v1/videos", json=template).raise_for_status().json()["id"])
        final_of_template = http.post(f"/v1/videos/{shot['id']}/finalize").raise_for_status().json()
        assert final_of_template["request"]["template"] == "product_showcase"
        assert _wait(http, final_of_template["id"])["status"] == "completed"

        changed = http.post("/v1/videos", json={"from": preview_id, "prompt": "a blue box"})
        assert changed.status_code == 400 and changed.json()["error"]["param"] == "prompt"
        missing = http.post("/v1/videos", json={"from": "video_" + "0" * 32})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "from"
        not_an_id = http.post("/v1/videos", json={"from": "../../etc"})
        assert not_an_id.status_code == 400 and not_an_id.json()["error"]["param"] == "from"
    # another key's preview does not exist for this one
    other = {"Authorization": f"Bearer {serve_app.other_key}"}
    foreign = httpx.post(f"{serve_app.url}/v1/videos", json={"from": preview_id}, headers=other, timeout=60)
    assert foreign.status_code == 404
