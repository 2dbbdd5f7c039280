"""Mixed traffic on one app: requests with `priority: interactive` run on the interactive pool's
experts (settings `interactive`: deployments of their own, wide for latency), the others on the
default pool. Served, both make the same video: tests/test_parallel.py, whose app's interactive
pool runs on ranks."""

from __future__ import annotations

import time

import pytest

from contract.experts import ExpertKind
from contract.request import GenerationRequest
from contract.settings import Settings, StepCacheSettings
from deployments.serve_executor import ExpertPools
from stages.job_state import JobState


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
    assert not pool.batching.enabled  # nothing lent: its replicas run steps as they come


def test_a_pool_that_backfills_schedules_its_steps(settings):
    lending = {"enabled": True, "experts": {"max_ongoing_requests": 3}, "backfill": 2}
    pool = Settings.model_validate({**settings.model_dump(), "interactive": lending}).interactive_pool()
    assert pool.batching.enabled and not settings.batching.enabled  # so an interactive step goes first


def test_the_pools_lend_at_most_backfill_batch_jobs_and_take_them_back(settings):
    def job(name: str, priority: str = "batch") -> JobState:
        return JobState(name, GenerationRequest.build(settings, prompt="a red ball", priority=priority))

    pools = ExpertPools({"batch": "default experts", "interactive": "wide experts"}, backfill=2)
    first, second, third = job("b1"), job("b2"), job("b3")
    assert [pools(j) for j in (first, second, third)] == ["wide experts", "wide experts", "default experts"]
    assert pools(first) == "wide experts" and pools(third) == "default experts"  # a job keeps its pool
    assert pools(job("i1", "interactive")) == "wide experts"  # never counted against the loans
    pools.release(first)
    assert pools(job("b4")) == "wide experts" and pools(job("b5")) == "default experts"
    pools.release(third)  # a job that was not lent frees nothing
    assert pools(job("b6")) == "default experts"

    alone = ExpertPools({"batch": "default experts"}, backfill=2)  # no interactive pool: nothing to lend
    assert alone(job("b7")) == "default experts" and alone(job("i2", "interactive")) == "default experts"


def test_the_pool_s_router_keeps_interactive_videos_apart(serve_app, tmp_path):
    """Two replicas in the interactive pool, one lent a batch job (backfill 1), the other running a
    director's video: the next interactive video goes to the one with the lent job (whose steps
    yield to it), not to share the other's GPUs. Serve's default router reads both queues as one
    long and picks either. Simulated GPUs: each phase waits the cost model's time, ~10 s here."""
    import httpx
    from ray import serve

    from cluster.app import bind_app
    from contract.settings import DeploymentSettings, InteractiveSettings, Limits, SimSettings

    name = "t2v-routing"
    small = {
        n: d.model_copy(update={"num_cpus": 0.01, "threads": 1}) for n, d in serve_app.settings.deployments.items()
    }
    pool = DeploymentSettings(num_cpus=0.01, threads=1, min_replicas=2, max_replicas=2, max_ongoing_requests=3)
    settings = serve_app.settings.model_copy(
        update={
            "deployments": small,
            "cache_dir": tmp_path / "cache",
            "serving": serve_app.settings.serving.model_copy(update={"output_uri": str(tmp_path / "outputs")}),
            "device": "sim",  # 1 simulated second = 20 ms: a 720p phase of 20 steps ~ 10 s
            "sim": SimSettings(gpu="h100", time_scale=0.02),
            "limits": Limits(max_height=1280, max_width=1280, max_frames=81),
            "interactive": InteractiveSettings(enabled=True, experts=pool, placement="co_located", backfill=1),
        }
    )
    video = {"prompt": "a red ball bouncing", "size": "1280x720", "num_frames": 81, "steps": 40, "cache": False}

    def running(http: httpx.Client, job_id: str) -> None:
        deadline = time.monotonic() + 120
        while (job := http.get(f"/v1/videos/{job_id}").json())["progress"] == 0:
            assert job["status"] in ("queued", "in_progress") and time.monotonic() < deadline, job
            time.sleep(0.1)

    def replica_of(http: httpx.Client, job_id: str) -> str:
        deadline = time.monotonic() + 240
        while (job := http.get(f"/v1/videos/{job_id}").json())["status"] != "completed":
            assert job["status"] in ("queued", "in_progress") and time.monotonic() < deadline, job
            time.sleep(0.5)
        return next(span["replica"] for span in job["trace"] if span["stage"] == "high_noise")

    serve.run(bind_app(settings), name=name, route_prefix="/routing")
    try:
        with httpx.Client(base_url=f"{serve_app.url}/routing", headers=serve_app.headers, timeout=60) as http:
            jobs = []
            for body in ({**video, "seed": 1}, {**video, "seed": 2, "priority": "interactive"}):
                jobs.append(http.post("/v1/videos", json=body).json()["id"])
                running(http, jobs[-1])  # the lent job, then a director's video, each under way
            short = {**video, "seed": 3, "steps": 8, "priority": "interactive"}
            jobs.append(http.post("/v1/videos", json=short).json()["id"])
            lent, first, second = (replica_of(http, job_id) for job_id in jobs)
    finally:
        serve.delete(name)
    assert first != lent and second != first, (lent, first, second)
