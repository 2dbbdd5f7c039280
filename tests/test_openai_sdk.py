"""The official `openai` SDK, pointed at the server, drives the whole video lifecycle."""

from __future__ import annotations

import time
import warnings

import pytest
from openai import BadRequestError, OpenAI

from stages.video import probe_mp4


@pytest.fixture(scope="module")
def sdk(serve_app) -> OpenAI:
    return OpenAI(base_url=f"{serve_app.url}/v1", api_key=serve_app.api_key, max_retries=0)


def test_sdk_create_retrieve_list_download_delete(sdk, tmp_path):
    warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks its videos API deprecated
    # The SDK posts multipart/form-data, seconds as a string; our extras go in extra_body.
    video = sdk.videos.create(
        model="t2v-tiny-wan2.2-a14b",
        prompt="一只橘猫在草地上奔跑",
        seconds="1",
        size="64x64",
        extra_body={"seed": 5, "steps": 4},
    )
    assert video.object == "video" and video.status == "queued" and video.progress == 0
    while video.status in ("queued", "in_progress"):
        time.sleep(0.2)
        video = sdk.videos.retrieve(video.id)
    assert video.status == "completed" and video.progress == 100
    assert video.size == "64x64" and video.seconds == "1.0625"  # 17 frames at 16 fps

    listed = [v.id for v in sdk.videos.list(limit=5)]
    assert video.id in listed

    content = sdk.videos.download_content(video.id)
    path = tmp_path / "sdk.mp4"
    content.write_to_file(path)
    info = probe_mp4(path.read_bytes())
    assert (info["frames"], info["width"], info["height"]) == (17, 64, 64) and info["metadata"]["seed"] == "5"

    deleted = sdk.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id


def test_sdk_sees_field_errors(sdk):
    with pytest.raises(BadRequestError) as info:
        sdk.videos.create(model="t2v-tiny-wan2.2-a14b", prompt="x", seconds="12", size="720x1280")
    error = info.value.body
    assert error["param"] in ("width", "height", "num_frames") and "between" in error["message"]


def test_sdk_sends_adapters_and_makes_the_final_of_a_shot(sdk):
    """The SDK posts `extra_body` as form fields (lora[][name]=..., from=...): the same requests as JSON."""
    warnings.simplefilter("ignore", DeprecationWarning)

    def finished(video):
        while video.status in ("queued", "in_progress"):
            time.sleep(0.2)
            video = sdk.videos.retrieve(video.id)
        return video

    preview = sdk.videos.create(
        model="t2v-tiny-wan2.2-a14b",
        prompt="a red ball bounces on the grass",
        size="64x64",
        extra_body={"seed": 3, "steps": 4, "lora": [{"name": "studio", "scale": 0.8}]},
    )
    preview = finished(preview)
    assert preview.status == "completed"
    assert preview.model_extra["request"]["lora"][0]["name"] == "studio"
    final = finished(sdk.videos.create(model="t2v-tiny-wan2.2-a14b", prompt="", extra_body={"from": preview.id}))
    assert final.status == "completed" and final.size == "128x128"
    assert final.model_extra["request"]["from_video"] == preview.id
    assert final.model_extra["request"]["lora"][0]["scale"] == 0.8  # the shot's adapters, kept
    with pytest.raises(BadRequestError) as info:
        sdk.videos.create(model="t2v-tiny-wan2.2-a14b", prompt="x", extra_body={"lora": [{"name": "nope"}]})
    assert info.value.body["param"] == "lora.0.name"
