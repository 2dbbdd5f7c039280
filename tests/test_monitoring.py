"""A real Prometheus scrapes the running app; every dashboard query returns data."""

from __future__ import annotations

import time

import httpx

from cluster.client import T2VClient
from contract.experts import ExpertKind
from monitoring.physics import VIOLATION_KINDS
from tests.prometheus_server import dashboard_queries, present, query, scrapes, total, wait_for

PHYSICS_COUNT = (
    'sum(ray_t2v_physics_score_count{engine="serve"})'  # the app's jobs (batch rows on Ray Data: engine="data")
)
COMPLETED = 'sum(ray_t2v_job_duration_seconds_count{status="completed"})'


def test_every_dashboard_query_returns_data(serve_app, prometheus):
    client = T2VClient(serve_app.url, serve_app.api_key)
    time.sleep(11)  # a few scrapes of what earlier tests left
    scored_before = total(query(prometheus, PHYSICS_COUNT))
    jobs = [
        client.create(None, template="product_showcase", slots={"product": p}, steps=4)["id"]
        for p in ("a lamp", "a vase")
    ]  # the second is a template hit
    jobs.append(client.create("a kite over the sea", steps=4, seed=5)["id"])
    jobs.append(client.create("a red ball on the sand", steps=4, seed=6, lora=[{"name": "studio", "scale": 0.7}])["id"])
    bad = httpx.post(f"{serve_app.url}/v1/videos", json={"prompt": "x", "size": "1x1"}, headers=serve_app.headers)
    assert bad.status_code == 400
    finished = [client.wait(j) for j in jobs]
    assert all(j["status"] == "completed" for j in finished)
    assert any(j["cache"].get("boundary") for j in finished)

    wait_for(prometheus, 'sum(ray_t2v_http_requests_total{status="400"})', lambda r: total(r) >= 1)
    wait_for(prometheus, "sum(ray_t2v_denoising_steps_total)", lambda r: total(r) > 0)
    # the adapter job's loads (its replicas may have had the adapter from earlier tests, or not)
    wait_for(prometheus, 'sum(ray_t2v_adapter_requests_total{result=~"hit|load"})', lambda r: total(r) >= 2)
    wait_for(prometheus, "sum(ray_t2v_adapter_loads_total)", lambda r: total(r) >= 1)
    # the job store's histograms reach Prometheus on their own schedule (alone, this test may be first)
    wait_for(prometheus, PHYSICS_COUNT, lambda r: total(r) >= scored_before + len(jobs))
    time.sleep(11)  # a few more scrapes, so rate() has two samples of everything
    empty = [expr for expr in dashboard_queries() if not present(prometheus, expr)]
    assert not empty, f"dashboard queries without data: {empty} ({scrapes(prometheus)})"
    # Series of events that may never have happened exist from the start, at zero.
    for series in [
        *(
            f'ray_t2v_cache_{name}_total{{level="{level}"}}'
            for name in ("evictions", "corrupt_entries")
            for level in ("embeddings", "boundary", "result")
        ),
        'ray_t2v_jobs_in_flight{status="queued"}',
        'ray_t2v_jobs_in_flight{status="in_progress"}',
        'ray_t2v_unreadable_records_total{store="jobs"}',
        'ray_t2v_denoising_steps_total{expert="low_noise"}',
        *(
            f'ray_t2v_adapter_requests_total{{expert="{e}",result="{r}"}}'
            for e in (k.metric_label for k in ExpertKind)
            for r in ("hit", "load")
        ),
        *(f'ray_t2v_physics_violations_total{{kind="{kind}"}}' for kind in VIOLATION_KINDS),
        # an adapter of the store that never loads into this expert (it has no low-noise weights)
        'ray_t2v_adapter_loads_total{expert="low_noise",adapter="studio-high"}',
    ]:
        assert present(prometheus, series), f"{series}: no series ({scrapes(prometheus)})"

    # Every completed video is scored once: the physics histogram counts the completions.
    # (Polled: a job of an earlier test may complete between two scrapes of the two series.)
    wait_for(prometheus, PHYSICS_COUNT, lambda r: total(r) == total(query(prometheus, COMPLETED)), timeout=60)
    assert all(0 <= j["physics"]["score"] <= 1 and j["physics"]["subscores"] for j in finished)


def test_a_gauge_set_once_stays_exported(serve_app, prometheus):
    """A cache's size is set at start and on writes only; Ray's agent forgets a gauge two export
    intervals after its last change, so each process sets its gauges again while it lives."""
    from cache.store import LEVELS

    sizes = "sum by (level) (ray_t2v_cache_size_bytes)"
    wait_for(prometheus, sizes, lambda r: {x["metric"]["level"] for x in r} == set(LEVELS))
    time.sleep(30)  # no traffic meanwhile: nothing changes the sizes
    # (polled a while: a scrape that failed under load hides every series until the next; a gauge
    # the agent forgot stays gone, as nothing sets it again)
    wait_for(prometheus, sizes, lambda r: {x["metric"]["level"] for x in r} == set(LEVELS), timeout=20)
