"""Access and input bounds on the real app: API keys, per-key jobs, body and prompt limits,
job ids that cannot address anything but a job."""

from __future__ import annotations

import httpx
import pytest

from contract.settings import ServingSettings
from stages.default_model import MAX_SEQUENCE_LENGTH


@pytest.fixture(scope="module")
def anonymous(serve_app) -> httpx.Client:
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


def keyed(serve_app, key: str) -> httpx.Client:
    return httpx.Client(base_url=serve_app.url, timeout=300, headers={"Authorization": f"Bearer {key}"})


def test_without_keys_the_server_stays_on_loopback():
    assert ServingSettings(host="0.0.0.0").bind_host == "127.0.0.1"
    assert ServingSettings(host="0.0.0.0", api_keys=["a-key-of-16-chars"]).bind_host == "0.0.0.0"
    # Whoever puts the proxies on the network (a Serve config, KubeRay), the ingress refuses it
    # without keys, unless asked by name.
    for host in ("127.0.0.1", "localhost", "::1"):
        ServingSettings().check_open_access(host)
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(PermissionError, match=f"refusing to serve on {host} without API keys"):
            ServingSettings().check_open_access(host)
        ServingSettings(api_keys=["a-key-of-16-chars"]).check_open_access(host)
        ServingSettings(allow_unauthenticated=True).check_open_access(host)


def test_an_empty_short_or_spaced_api_key_is_refused_without_printing_it():
    from pydantic import ValidationError

    for keys in ([""], ["a-key-of-16-chars", "short-secret"], ["sixteen chars with spaces"]):
        with pytest.raises(
            ValidationError, match=r"api_keys\[\d\]: an API key must be at least 16 characters"
        ) as error:
            ServingSettings(api_keys=keys)
        assert all(key not in str(error.value) for key in keys if key)


def test_the_running_ingress_knows_where_the_proxies_listen(serve_app):
    from deployments.ingress import proxy_host

    assert proxy_host("unknown") == "127.0.0.1"  # what the session's app was started with


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/videos"),
        ("POST", "/v1/videos"),
        ("POST", "/v1/videos/sync"),
        ("GET", "/v1/templates"),
        ("GET", "/v1/models"),
        ("GET", "/v1/videos/video_00000000000000000000000000000000"),
        ("DELETE", "/v1/videos/video_00000000000000000000000000000000"),
    ],
)
def test_every_api_route_needs_a_valid_key(serve_app, anonymous, method, path):
    bad = ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Bearer"})
    for headers in (*bad, {"Authorization": f"Basic {serve_app.api_key}"}):
        response = anonymous.request(method, path, headers=headers, json={"prompt": "a cat"})
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"


def test_liveness_needs_no_key(anonymous):
    assert anonymous.get("/healthz").status_code == 200


def test_a_job_is_visible_only_to_the_key_that_created_it(serve_app):
    with keyed(serve_app, serve_app.api_key) as a, keyed(serve_app, serve_app.other_key) as b:
        job = a.post("/v1/videos", json={"prompt": "a kite over a hill", "steps": 3, "seed": 8}).json()
        for method, path in (
            ("GET", f"/v1/videos/{job['id']}"),
            ("GET", f"/v1/videos/{job['id']}/content"),
            ("DELETE", f"/v1/videos/{job['id']}"),
        ):
            response = b.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "video_not_found"
        assert job["id"] not in [j["id"] for j in b.get("/v1/videos", params={"limit": 100}).json()["data"]]
        assert job["id"] in [j["id"] for j in a.get("/v1/videos", params={"limit": 100}).json()["data"]]
        assert a.get(f"/v1/videos/{job['id']}").json()["id"] == job["id"]
        assert "owner" not in job


def test_the_result_cache_answers_only_the_key_that_made_the_video(serve_app):
    """Key B's `cache.result` would otherwise tell which slot values key A asked for."""
    body = {"template": "product_showcase", "slots": {"product": "a secret prototype"}, "steps": 3}
    with keyed(serve_app, serve_app.api_key) as a, keyed(serve_app, serve_app.other_key) as b:
        assert a.post("/v1/videos/sync", json=body).status_code == 200
        again = a.post("/v1/videos", json=body).json()
        assert again["status"] == "completed" and again["cache"]["result"] is True
        theirs = b.post("/v1/videos", json=body).json()
        assert theirs["cache"]["result"] is False and theirs["status"] == "queued"


def test_body_size_is_bounded(serve_app):
    limit = serve_app.settings.serving.max_body_bytes
    with keyed(serve_app, serve_app.api_key) as client:
        response = client.post("/v1/videos", json={"prompt": "x" * (limit + 1)})
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

        def chunks():  # no content-length: counted while read
            for _ in range(limit // 1024 + 2):
                yield b"x" * 1024

        response = client.post("/v1/videos", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert client.get("/v1/models").status_code == 200  # the replica goes on


def test_prompt_tokens_are_bounded(serve_app):
    with keyed(serve_app, serve_app.api_key) as client:
        response = client.post("/v1/videos", json={"prompt": "猫" * 600})  # 600 characters, over any model's limit
        error = response.json()["error"]
        assert response.status_code == 400 and error["param"] == "prompt"
        assert f"at most {MAX_SEQUENCE_LENGTH} tokens" in error["message"]  # the default model's text length


@pytest.mark.parametrize("video_id", ["..%2F..%2Fjobs", "video_..%2F..%2Fetc%2Fpasswd", "video_0", "%2Fetc%2Fpasswd"])
def test_job_ids_address_only_jobs(serve_app, video_id):
    with keyed(serve_app, serve_app.api_key) as client:
        for path in (f"/v1/videos/{video_id}", f"/v1/videos/{video_id}/content"):
            assert client.get(path).status_code == 404
