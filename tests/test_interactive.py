"""Mixed traffic on one app: requests with `priority: interactive` run on the interactive pool's
experts (settings `interactive`: deployments of their own, wide for latency), the others on the
default pool; both make the same video."""

from __future__ import annotations

import httpx
import pytest

from contract.experts import ExpertKind
from contract.settings import InteractiveSettings, Settings, StepCacheSettings


def test_the_interactive_pool_has_its_own_settings(settings):
    experts = {"parallel": {"ulysses": 2}, "max_replicas": 3}
    wide = Settings.model_validate({**settings.model_dump(), "interactive": {"enabled": True, "experts": experts}})
    pool = wide.interactive_pool()
    for kind in ExpertKind:
        assert pool.deployments[kind.deployment].parallel.ulysses == 2  # what its replicas read
        assert wide.deployments[kind.deployment].parallel.ulysses == 1  # the default pool keeps its own
        assert kind.interactive_deployment == kind.deployment + "Interactive"
    with pytest.raises(ValueError, match=r"does not run on parallel experts \(\['interactive.experts'\]\)"):
        Settings.model_validate({**wide.model_dump(), "step_cache": StepCacheSettings(kind="first_block").model_dump()})
    with pytest.raises(ValueError, match="priority"):
        Settings.model_validate({**wide.model_dump(), "interactive": {"enabled": True, "priority": 1}})


def test_interactive_requests_run_on_the_interactive_pool(serve_app, tmp_path):
    from ray import serve
    from ray.util.state import list_actors

    from cluster.app import bind_app
    from tests.test_executors import digest

    name = "t2v-mixed"
    small = {n: d.model_copy(update={"num_cpus": 0.01}) for n, d in serve_app.settings.deployments.items()}
    serving = serve_app.settings.serving.model_copy(update={"output_uri": str(tmp_path / "outputs")})
    interactive = InteractiveSettings(enabled=True, experts=small[ExpertKind.HIGH_NOISE.deployment])
    settings = serve_app.settings.model_copy(
        update={"deployments": small, "cache_dir": tmp_path / "cache", "serving": serving, "interactive": interactive}
    )

    def deployments_of(job: dict) -> dict[str, str]:
        """Stage -> the deployment of the replica that ran it (replica actors are named app#deployment#id)."""
        replicas = {}
        for actor in list_actors(filters=[("state", "=", "ALIVE")]):
            if (actor.name or "").startswith(f"SERVE_REPLICA::{name}#"):
                _, deployment, replica = actor.name.split("#")
                replicas[replica] = deployment
        return {span["stage"]: replicas.get(span["replica"], "?") for span in job["trace"]}

    body = {"prompt": "a blue box falling", "seed": 3, "steps": 3, "cache": False}
    serve.run(bind_app(settings), name=name, route_prefix="/mixed")
    try:
        with httpx.Client(base_url=f"{serve_app.url}/mixed", headers=serve_app.headers, timeout=300) as http:
            made = {}
            for priority in ("interactive", "batch"):
                video = http.post("/v1/videos/sync", json={**body, "priority": priority})
                assert video.status_code == 200, video.text
                job = http.get(f"/v1/videos/{video.headers['X-Video-Id']}").json()
                made[priority] = (digest(video.content), deployments_of(job))
            refused = http.post("/v1/videos/sync", json={**body, "priority": "urgent"})
    finally:
        serve.delete(name)
    (interactive, on_interactive), (batch, on_batch) = made["interactive"], made["batch"]
    assert on_interactive["high_noise"] == "HighNoiseExpertInteractive", on_interactive
    assert on_interactive["low_noise"] == "LowNoiseExpertInteractive", on_interactive
    assert (on_batch["high_noise"], on_batch["low_noise"]) == ("HighNoiseExpert", "LowNoiseExpert"), on_batch
    assert interactive == batch  # the same video on either pool
    assert refused.status_code == 400 and "priority" in refused.json()["error"]["param"]
