"""Faults on the real app: replicas killed (SIGKILL, by PID) while jobs are in them.

Ray Serve replaces a dead replica by itself; the app's part is that no job hangs or is
lost: a job whose stage replica died runs again once (then fails naming the stage), a job
whose ingress died fails with a clear error, records survive a job-store restart, and the
latent cache keeps no half-written entry.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from bench.reliability import replica_pids, wait_record, wait_replaced
from cache.keys import boundary_key
from cache.store import LatentCache
from cluster.client import T2VClient
from contract.request import GenerationRequest
from deployments.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def client(serve_app) -> T2VClient:
    return T2VClient(serve_app.url, serve_app.api_key, timeout=60)


@pytest.mark.parametrize(
    "stage, deployment",
    [
        ("encode", "TextEncoder"),
        ("high_noise", "HighNoiseExpert"),
        ("low_noise", "LowNoiseExpert"),
        ("decode", "Decoder"),
    ],
)
def test_a_stage_replica_killed_under_jobs(serve_app, client, stage, deployment):
    (pid,) = replica_pids(deployment)
    # Two jobs in flight; the first is the one caught in the stage. `final` makes each
    # stage last long enough to be caught; distinct prompts so no cache answers.
    fields = {"preset": "final", "steps": 12, "cache": False}
    jobs = [client.create(f"a lighthouse in a storm, {stage} fault {i}", seed=70 + i, **fields)["id"] for i in range(2)]
    if stage != "encode":  # encoding takes milliseconds: it is killed with the job on its way in
        wait_record(client, jobs[0], lambda j: j["stage"] == stage, timeout=120)
    os.kill(pid, signal.SIGKILL)

    finished = [client.wait(j, timeout=300) for j in jobs]
    for job in finished:
        assert job["status"] == "completed", job["error"]
    assert finished[0]["retries"] == 1 or stage == "encode"  # the caught one ran again, once
    wait_replaced(deployment, dead=[pid])
    after = client.wait(client.create(f"a quiet harbour after the {stage} fault", steps=3, seed=5)["id"])
    assert after["status"] == "completed" and after["retries"] == 0  # recovered by itself


def test_a_template_phase_killed_midway_leaves_no_partial_cache_entry(serve_app, client):
    """The high-noise replica dies while computing a template's shared phase under the cache
    lock: the lock expires, the re-run computes it, and what the cache holds is whole."""
    (pid,) = replica_pids("HighNoiseExpert")
    fields = {
        "template": "product_showcase",
        "slots": {"product": "a brass compass"},
        "preset": "final",
        "num_inference_steps": 17,
    }
    job_id = client.create(None, **fields)["id"]
    wait_record(client, job_id, lambda j: j["stage"] == "high_noise" and j["steps_done"] > 0, timeout=120)
    os.kill(pid, signal.SIGKILL)

    job = client.wait(job_id, timeout=300)
    assert job["status"] == "completed" and job["retries"] == 1 and job["cache"]["boundary"] is False
    settings = serve_app.settings
    cache = LatentCache.from_settings(settings)
    request = GenerationRequest.build(settings, **fields)
    state = cache.get("boundary", boundary_key(Checkpoint.from_settings(settings).identity, request))
    assert state is not None and state.step > 0  # whole: read back through its checksum
    assert cache.stats()["boundary"]["corrupt"] == 0
    wait_replaced("HighNoiseExpert", dead=[pid])


def test_an_ingress_killed_midway_fails_its_job_and_loses_no_records(serve_app, client):
    done = client.wait(client.create("a lantern on a jetty", steps=3, seed=11)["id"])
    (pid,) = replica_pids("Ingress")
    job_id = client.create("a paper crane over a river at dusk", preset="final", steps=30, seed=12, cache=False)["id"]
    wait_record(client, job_id, lambda j: j["status"] == "in_progress")
    os.kill(pid, signal.SIGKILL)

    wait_replaced("Ingress", dead=[pid])
    # Nothing runs the orphaned job any more: the job store fails it once its ingress is silent.
    orphan = wait_record(
        client,
        job_id,
        lambda j: j["status"] != "in_progress",
        timeout=serve_app.settings.serving.runner_lost_seconds + 60,
    )
    assert orphan["status"] == "failed" and orphan["error"]["code"] == "ingress_lost"
    assert client.retrieve(done["id"])["status"] == "completed"  # records are intact
    assert client.content(done["id"])[:12].find(b"ftyp") > 0
    assert client.wait(client.create("a lantern on a jetty, again", steps=3, seed=13)["id"])["status"] == "completed"


def test_a_job_store_killed_midway_reloads_every_record(serve_app, client):
    done = client.wait(client.create("a heron in the reeds", steps=3, seed=21)["id"])
    (pid,) = replica_pids("JobStore")
    job_id = client.create("a heron taking off from the reeds", preset="final", steps=16, seed=22, cache=False)["id"]
    wait_record(client, job_id, lambda j: j["stage"] == "high_noise")
    os.kill(pid, signal.SIGKILL)

    wait_replaced("JobStore", dead=[pid])
    assert client.retrieve(done["id"])["status"] == "completed"
    job = wait_record(client, job_id, lambda j: j["status"] not in ("queued", "in_progress"))
    # Completed, whether its stages' reports got through on the new store or it ran again.
    assert job["status"] == "completed" and job["retries"] <= 1, job
    listed = [j["id"] for j in client.list(limit=100)["data"]]
    assert done["id"] in listed and job_id in listed
    with httpx.Client(base_url=serve_app.url) as anonymous:
        assert anonymous.get("/healthz").status_code == 200


def test_the_watchdog_fails_overrunning_and_orphaned_jobs(tmp_path, settings):
    """The job store's check (run every second in the JobStore replica), on a plain store."""
    from contract.jobs import JobCreate
    from contract.messages import StageReport
    from contract.storage import OutputStore
    from deployments.job_store import JobStore

    store = JobStore(OutputStore(str(tmp_path)), stage_timeout=5, runner_lost=10)
    request = GenerationRequest.build(settings, prompt="a cat", seed=1)
    hung = store.create(JobCreate(request=request, model_id="m", steps_total=10, runner="ingress-1")).job
    orphan = store.create(JobCreate(request=request, model_id="m", steps_total=10, runner="ingress-2")).job
    lost = store.create(JobCreate(request=request, model_id="m", steps_total=10)).job  # its next call never came
    now = time.time()
    store.heartbeat("ingress-1")
    store.heartbeat("ingress-2")
    assert store.stage_started(hung.id, "high_noise")
    store.stage_started(lost.id, "encode")
    store.stage_done(StageReport(job_id=lost.id, stage="encode", start=now, end=now))

    assert store.check(now + 1) == []
    assert store.check(now + 6) == [hung.id, lost.id]  # a stage overran 5 s; 5 s between stages
    assert store.get(hung.id).error.message == "stage high_noise did not finish within 5 s"
    assert (
        store.get(lost.id).error.code == "stalled"
        and "after the last one finished (encode)" in store.get(lost.id).error.message
    )
    assert store.step_done(hung.id, "high_noise") is False  # its stage stops at its next progress report
    assert store.stage_started(hung.id, "low_noise") is False  # and no later stage starts
    assert store.check(now + 11) == [orphan.id]  # ingress-2 silent for over 10 s
    assert store.get(orphan.id).error.code == "ingress_lost"
