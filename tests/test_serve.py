"""The Serve app over real HTTP on a real local Ray: lifecycle, sync, cancel, errors, queue, list."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cluster.client import T2VClient
from stages.content_credentials import GENERATION, read_credentials
from stages.video import probe_mp4


@pytest.fixture(scope="module")
def http(serve_app) -> httpx.Client:
    with httpx.Client(base_url=serve_app.url, timeout=300, headers=serve_app.headers) as client:
        yield client


@pytest.fixture(scope="module")
def client(serve_app) -> T2VClient:
    return T2VClient(serve_app.url, serve_app.api_key)


def _wait_active(http: httpx.Client, video_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/videos/{video_id}").json()
        if job["status"] == "in_progress" and job["steps_done"] > 0:
            return job
        assert job["status"] in ("queued", "in_progress"), job
        time.sleep(0.05)
    raise TimeoutError(video_id)


def test_job_lifecycle_with_real_progress(http, serve_app):
    created = http.post("/v1/videos", json={"prompt": "a red ball bouncing", "seed": 11, "steps": 24})
    assert created.status_code == 202, created.text
    job = created.json()
    assert (job["object"], job["status"], job["progress"]) == ("video", "queued", 0)
    assert job["id"].startswith("video_") and isinstance(job["created_at"], int)

    seen = []
    while job["status"] in ("queued", "in_progress"):
        job = http.get(f"/v1/videos/{job['id']}").json()
        seen.append(job["progress"])
        time.sleep(0.05)
    assert job["status"] == "completed", job
    assert job["progress"] == 100 and job["steps_done"] == job["steps_total"] == 24
    assert seen == sorted(seen), "progress never goes back"
    assert any(0 < p < 100 for p in seen), f"no intermediate progress seen: {seen}"
    # create, the encoder's and decoder's words, the end; an expert's words at most once per
    # serving.progress_seconds of its work (a word per step would be 24 more)
    expert_seconds = job["timings"]["high_noise"] + job["timings"]["low_noise"]
    assert job["store_calls"] <= 4 + 2 + expert_seconds / serve_app.settings.serving.progress_seconds, job
    assert {"queue", "encode", "high_noise", "low_noise", "decode", "mp4", "score", "total"} <= set(job["timings"])
    assert [s["stage"] for s in job["trace"]] == ["encode", "high_noise", "low_noise", "decode", "mp4", "score"]
    # decode's timing is the VAE alone: with its parts (mp4, score) it makes up the decoder's span.
    decoder_span = next(s["end"] - s["start"] for s in job["trace"] if s["stage"] == "decode")
    parts = sum(job["timings"][name] for name in ("decode", "mp4", "score"))
    assert job["timings"]["decode"] < decoder_span and parts == pytest.approx(decoder_span, abs=1e-6)
    assert job["completed_at"] >= job["created_at"]
    assert (job["size"], job["model"]) == ("64x64", "t2v-tiny-wan2.2-a14b")

    content = http.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    info = probe_mp4(content.content)
    assert (info["frames"], info["width"], info["height"]) == (17, 64, 64)
    assert info["metadata"]["seed"] == "11" and info["metadata"]["ai_generated"] == "true"
    credentials = read_credentials(content.content)  # signed by the node's development identity
    assert credentials.state == "Valid" and credentials.generated, credentials
    assert credentials.assertion(GENERATION)["model"]["name"] == "t2v-tiny-wan2.2-a14b"


def _frames(mp4: bytes) -> np.ndarray:
    import io

    import av

    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)


def test_sync_equals_in_process_pipeline(serve_app, http, tmp_path):
    body = {"prompt": "一只橘猫在草地上奔跑", "seed": 21, "size": "96x64", "num_frames": 9, "steps": 6}
    response = http.post("/v1/videos/sync", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4" and response.headers["x-video-id"].startswith("video_")

    # The in-process pipeline, with one thread per op as the replicas have (Ray sets
    # OMP_NUM_THREADS=1 for fractional CPUs): same kernels, so the same frames. The mp4
    # bytes themselves may differ: x264 is not bit-reproducible across processes here.
    local = tmp_path / "local.mp4"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "generate",
            body["prompt"],
            "-o",
            str(local),
            "--seed",
            "21",
            "--size",
            "96x64",
            "--frames",
            "9",
            "--steps",
            "6",
            "--model",
            str(serve_app.model_dir),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "T2V_CACHE__ENABLED": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    served, expected = _frames(response.content), _frames(local.read_bytes())
    assert served.shape == expected.shape == (9, 64, 96, 3)
    assert _psnr(served, expected) > 40
    other = _frames(http.post("/v1/videos/sync", json={**body, "seed": 22}).content)
    assert _psnr(other, expected) < 25  # a different seed is a different video


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_cancel_in_flight_then_delete(http):
    job = http.post("/v1/videos", json={"prompt": "slow", "preset": "final", "steps": 60}).json()
    running = _wait_active(http, job["id"])
    assert running["status"] == "in_progress"

    cancelled = http.delete(f"/v1/videos/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"id": job["id"], "object": "video.deleted", "deleted": False, "status": "cancelled"}
    time.sleep(2)  # the running phase stops within a step or two
    first = http.get(f"/v1/videos/{job['id']}").json()
    time.sleep(2)
    later = http.get(f"/v1/videos/{job['id']}").json()
    assert later["status"] == "cancelled"
    assert later["steps_done"] == first["steps_done"] < 60, "work went on after the cancel"
    assert http.get(f"/v1/videos/{job['id']}/content").status_code == 409

    deleted = http.delete(f"/v1/videos/{job['id']}").json()
    assert deleted == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert http.get(f"/v1/videos/{job['id']}").status_code == 404


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"prompt": "x", "size": "100x64"}, "width", "multiple of 16"),
        ({"prompt": "x", "size": "huge"}, "size", "WxH"),
        ({"prompt": "x", "num_frames": 18}, "num_frames", "4k+1"),
        ({"prompt": "x", "steps": 1000}, "num_inference_steps", "between 1 and 60"),
        ({"prompt": "x", "seconds": 60}, "num_frames", "between 1 and 65"),
        ({"prompt": "x", "colour": "red"}, "colour", "Extra inputs"),
        ({"prompt": "x", "model": "sora-2"}, "model", "unknown model"),
        ({"prompt": "x", "seed": "abc"}, "seed", "valid integer"),
        ({"size": "64x64"}, "prompt", "a prompt (or a template) is required"),
        ({"template": "nope"}, "template", "unknown template 'nope'"),
        ({"template": "product_showcase"}, "slots.product", "required by template"),
        ({"template": "scene", "slots": {"subject": "a dog", "mood": "sad"}}, "slots.mood", "not a slot"),
        ({"prompt": "x", "template": "scene", "slots": {"subject": "a dog"}}, "prompt", "not both"),
        ({"prompt": "x", "seconds": 1, "num_frames": 17}, "seconds", "not both"),
        # Non-finite numbers, as JSON numbers or as the strings a form sends
        ({"prompt": "x", "seconds": 1e308}, "seconds", "finite"),
        ({"prompt": "x", "seconds": "inf"}, "seconds", "finite"),
        ({"prompt": "x", "seconds": "Infinity"}, "seconds", "finite"),
        ({"prompt": "x", "guidance": "NaN"}, "guidance", "finite"),
        ({"prompt": "x", "guidance_2": "-inf"}, "guidance_2", "finite"),
        ({"prompt": "x", "min_physics_score": "nan"}, "min_physics_score", "finite"),
        ({"prompt": "x", "fps": "inf"}, "fps", "integer"),
        ({"prompt": "x", "steps": 1e308}, "steps", "integer"),
    ],
)
def test_bad_input_names_the_field(http, body, param, words):
    response = http.post("/v1/videos", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_bad_bodies_and_unknown_ids(http):
    response = http.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"
    response = http.post("/v1/videos", json=["a list"])
    assert response.status_code == 400
    # nested thousands deep (Python's JSON parser raises RecursionError on it), or deeper than
    # any field needs: a 400 naming the body, and the replica serves on
    for deep in (b"[" * 30_000 + b"]" * 30_000, b'{"prompt": "x", "slots": ' + b'{"a": ' * 900 + b"1" + b"}" * 901):
        response = http.post("/v1/videos", content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "body" and "nested deeper than 32 levels" in error["message"], error
    for bad in ("video_" + "0" * 32, "nope", "video_%2E%2E", "%2E%2E"):
        for path in (f"/v1/videos/{bad}", f"/v1/videos/{bad}/content"):
            response = http.get(path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "video_not_found"
    response = http.get("/v1/videos/..%2F..%2Fetc%2Fpasswd/content")
    assert response.status_code == 404 and response.json()["error"]["code"] in ("video_not_found", "not_found")
    for params, param in (({"limit": 0}, "limit"), ({"order": "sideways"}, "order")):
        response = http.get("/v1/videos", params=params)
        assert response.status_code == 400 and response.json()["error"]["param"] == param


def tracebacks_in_logs(settings) -> int:
    """Tracebacks written so far by every process of the app's Ray session."""
    logs = Path(settings.serving.ray_temp_dir) / "session_latest" / "logs"
    return sum(
        path.read_text(errors="replace").count("Traceback (most recent call last)")
        for path in logs.rglob("*")
        if path.is_file() and path.suffix in (".log", ".err", ".out")
    )


def test_full_queue_gets_fast_503_with_retry_after(serve_app, http):
    """...and a full queue and cancelled jobs are outcomes, not errors: no traceback in any log."""
    before = tracebacks_in_logs(serve_app.settings)
    limit = serve_app.settings.serving.max_active_jobs
    body = {"prompt": "burst", "preset": "final", "steps": 30}

    def post(_):
        start = time.perf_counter()
        response = httpx.post(f"{serve_app.url}/v1/videos", json=body, timeout=60, headers=serve_app.headers)
        return response, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(limit + 6)))
    accepted = [r.json()["id"] for r, _ in results if r.status_code == 202]
    rejected = [(r, t) for r, t in results if r.status_code == 503]
    try:
        assert len(accepted) == limit and len(rejected) == 6
        for response, seconds in rejected:
            assert response.headers["retry-after"].isdigit()
            assert response.json()["error"]["code"] == "queue_full"
            assert seconds < 5
    finally:
        for video_id in accepted:
            http.delete(f"/v1/videos/{video_id}")
    # Cancelled jobs leave the queue: new work is accepted again.
    after = http.post("/v1/videos", json={"prompt": "after the burst", "steps": 2})
    assert after.status_code == 202
    # Stages take jobs in order: once this one is done, every cancelled one has stopped.
    assert T2VClient(serve_app.url, serve_app.api_key).wait(after.json()["id"])["status"] == "completed"
    time.sleep(2)  # log lines reach their files
    assert tracebacks_in_logs(serve_app.settings) == before


def test_list_paginates_and_delete_removes(client):
    ids = [client.create("list me", seed=i, steps=2)["id"] for i in range(3)]
    for video_id in ids:
        assert client.wait(video_id)["status"] == "completed"
    page = client.list(limit=2)
    assert page["object"] == "list" and len(page["data"]) == 2 and page["has_more"]
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]  # newest first
    rest = client.list(limit=2, after=page["last_id"])
    assert rest["data"][0]["id"] == ids[0]
    ascending = client.list(limit=100, order="asc")["data"]
    assert [j["id"] for j in ascending if j["id"] in ids] == ids

    assert client.delete(ids[1]) == {"id": ids[1], "object": "video.deleted", "deleted": True}
    listed = {j["id"] for j in client.list(limit=100)["data"]}
    assert ids[1] not in listed and ids[0] in listed


def test_stages_pipeline_across_requests(client):
    """With several requests in flight, different stages work on different jobs at once."""
    ids = [client.create("pipelined", seed=i, preset="final", steps=8)["id"] for i in range(4)]
    jobs = [client.wait(video_id) for video_id in ids]
    assert all(j["status"] == "completed" for j in jobs)
    spans = [(job["id"], s) for job in jobs for s in job["trace"]]

    def overlap(a, b) -> float:
        return min(a["end"], b["end"]) - max(a["start"], b["start"])

    expert_overlaps = [
        overlap(a, b)
        for job_a, a in spans
        if a["stage"] == "low_noise"
        for job_b, b in spans
        if b["stage"] == "high_noise" and job_b != job_a and overlap(a, b) > 0
    ]
    assert expert_overlaps, "the low-noise expert never worked while the high-noise expert did"
    replicas = {(s["stage"], s["replica"]) for _, s in spans}
    high = {r for stage, r in replicas if stage == "high_noise"}
    low = {r for stage, r in replicas if stage == "low_noise"}
    assert high and low and not high & low, "each expert runs on its own replica"


def test_models_health_and_openapi(http):
    assert http.get("/healthz").json() == {"status": "ok", "model": "t2v-tiny-wan2.2-a14b"}
    models = http.get("/v1/models").json()
    assert models["data"][0]["id"] == "t2v-tiny-wan2.2-a14b"
    spec = http.get("/openapi.json").json()
    for path in ("/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/v1/videos/sync"):
        assert path in spec["paths"], path
    create = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(create)


def test_generate_command_against_the_server(serve_app, tmp_path):
    out = tmp_path / "remote.mp4"
    keyed = {**os.environ, "T2V_API_KEY": serve_app.api_key}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "generate",
            "一只橘猫在草地上奔跑",
            "--url",
            serve_app.url,
            "-o",
            str(out),
            "--seed",
            "4",
            "--steps",
            "5",
            "--size",
            "64x48",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=keyed,
    )
    assert run.returncode == 0, run.stderr
    assert "100/100" in run.stderr and "wrote" in run.stdout
    info = probe_mp4(out.read_bytes())
    assert (info["frames"], info["width"], info["height"], info["metadata"]["seed"]) == (17, 64, 48, "4")
    bad = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "generate", "x", "--url", serve_app.url, "--size", "65x48"],
        capture_output=True,
        text=True,
        timeout=120,
        env=keyed,
    )
    assert bad.returncode == 2 and "width" in bad.stderr and "multiple of 16" in bad.stderr
    keyless = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "generate", "x", "--url", serve_app.url, "--api-key", "wrong"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert keyless.returncode == 2 and "HTTP 401" in keyless.stderr and "API key" in keyless.stderr


def test_template_requests_share_the_high_noise_phase(serve_app, client):
    """Through the app, across replicas: one computes the boundary latent, the other reads it."""
    from cache.store import LatentCache

    cache = LatentCache.from_settings(serve_app.settings)
    before = cache.stats()["boundary"]
    bodies = [{"template": "pet_portrait", "slots": {"animal": animal}, "steps": 8} for animal in ("cat", "dog")]
    ids = [client.create(None, **body)["id"] for body in bodies]  # together: one computes, one waits
    jobs = [client.wait(i) for i in ids]
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert sorted(j["cache"]["boundary"] for j in jobs) == [False, True]
    after = cache.stats()["boundary"]
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 1)
    assert {j["prompt"] for j in jobs} == {
        "a ginger cat playing in a sunny garden",
        "a ginger dog playing in a sunny garden",
    }
    assert all(j["steps_done"] == j["steps_total"] == 8 for j in jobs)
    assert client.content(ids[0]) != client.content(ids[1])


def test_identical_request_is_answered_from_the_result_cache(client):
    body = {"seed": 31, "steps": 4, "size": "64x48"}
    first = client.wait(client.create("a paper boat on a lake", **body)["id"])
    assert first["cache"]["result"] is False
    repeat = client.create("a paper boat on a lake", **body)
    assert repeat["status"] == "completed" and repeat["cache"]["result"] is True  # in the 202 itself
    assert client.content(repeat["id"]) == client.content(first["id"])
    assert client.create("a paper boat on a lake", **body, cache=False)["status"] == "queued"


def test_templates_endpoint(http):
    templates = {t["name"]: t for t in http.get("/v1/templates").json()["data"]}
    assert templates["product_showcase"]["text"] == "product showcase: {product} on {surface}, {lighting}"
    assert templates["product_showcase"]["slots"]["surface"]["default"] == "a marble table"


def test_free_prompt_close_to_a_template_shares_its_phase(client):
    """Approximate match (on in this app): a prompt near a template's base prompt reuses it."""
    near = client.wait(client.create("a brown animal sitting in a room.", steps=6)["id"])
    assert near["matched_template"]["template"] == "pet_portrait"
    assert near["matched_template"]["similarity"] >= 0.9
    assert near["request"]["base_prompt"] == "a brown animal sitting in a room"
    assert near["cache"]["boundary"] in (True, False)  # template mode: the boundary level applies
    far = client.wait(client.create("一只橘猫在草地上奔跑", steps=6)["id"])
    assert far["matched_template"] is None and far["cache"]["boundary"] is None
    seeded = client.create("a brown animal sitting in a room.", steps=6, seed=3)  # an explicit seed is kept
    assert seeded["matched_template"] is None


def test_low_physics_score_is_repaired_with_new_seeds(client):
    job = client.wait(client.create("a falling ball", steps=6, seed=2, min_physics_score=0.99, max_retries=1)["id"])
    assert job["status"] == "completed", job
    attempts = job["physics"]["attempts"]
    assert [a["attempt"] for a in attempts] == [0, 1] and attempts[1]["seed"] != attempts[0]["seed"]
    assert job["physics"]["score"] == max(a["score"] for a in attempts)
    assert job["steps_total"] > 6 and job["progress"] == 100
    assert [s["stage"] for s in job["trace"]].count("low_noise") == 2
    assert client.content(job["id"])[4:8] == b"ftyp"
    response = client.http.post("/v1/videos", json={"prompt": "x", "min_physics_score": 2})
    assert response.status_code == 400 and response.json()["error"]["param"] == "min_physics_score"
