"""Faults on the real app: replicas killed (SIGKILL, by PID) while jobs are in them.

Ray Serve replaces a dead replica by itself; the app's part is that no job hangs or is
lost: a job whose stage replica died runs again once (then fails naming the stage), a job
whose ingress died fails with a clear error, records survive a job-store restart, and the
latent cache keeps no half-written entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from bench.reliability import replica_pids, wait_record, wait_replaced
from cache.keys import boundary_key
from cache.store import LatentCache
from cluster.client import T2VClient
from contract.jobs import JobError
from contract.request import GenerationRequest
from stages.checkpoint import Checkpoint


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
    assert state is not None and state["step"] > 0  # whole: read back through its checksum
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


def test_the_watchdog_fails_every_kind_of_forgotten_job(tmp_path, settings):
    """The job store's check (run every second in the JobStore replica), on a plain store, for
    every state a job record can be in."""
    from contract.jobs import JobCreate
    from contract.messages import PhysicsResult, StageProgress
    from contract.storage import OutputStore
    from stages.job_store import JobStore

    request = GenerationRequest.build(settings, prompt="a cat", seed=1)

    def create(store: JobStore, runner: str | None = None):
        return store.create(JobCreate(request=request, model_id="m", steps_total=10, runner=runner)).job

    store = JobStore(OutputStore(str(tmp_path / "a")), stage_timeout=5)
    hung, forgotten = create(store, "ingress-1"), create(store, "ingress-1")
    done, failed, cancelled = (create(store, "ingress-1") for _ in range(3))
    now = time.time()
    assert store.report(StageProgress(job_id=hung.id, stage="high_noise", steps=2))  # ... and never again
    # `forgotten` stays queued: accepted, and nothing ever started it.
    store.complete(done.id, PhysicsResult(score=0.5))  # scored, as every completed job is (the metrics count it)
    store.fail(failed.id, JobError(code="generation_failed", message="boom"))
    store.cancel(cancelled.id)

    assert store.check(now + 1) == []
    assert store.check(now + 6) == [hung.id, forgotten.id]  # silent for 5 s; queued for 5 s
    assert store.get(hung.id).error.code == "stage_timeout"
    assert store.get(hung.id).error.message.startswith("no word from its stages for 5 s (last: high_noise)")
    assert (
        store.get(forgotten.id).error.code == "stalled" and "of being accepted" in store.get(forgotten.id).error.message
    )
    assert store.report(StageProgress(job_id=hung.id, stage="high_noise")) is False  # its stage stops at its next word
    # Finished jobs are never touched.
    assert store.check(now + 600) == []
    assert [store.get(j.id).status for j in (done, failed, cancelled)] == ["completed", "failed", "cancelled"]
    assert store.get(failed.id).error.message == "boom"

    store = JobStore(OutputStore(str(tmp_path / "b")), runner_lost=10)
    running, orphan = create(store, "ingress-1"), create(store, "ingress-2")
    store.report(StageProgress(job_id=running.id, stage="encode"))
    now = time.time()
    store.heartbeat("ingress-1")
    store.heartbeat("ingress-2")
    assert store.check(now + 5) == []
    # No heartbeat from anyone for longer than that: the store is the one cut off (starved of CPU,
    # its calls queued), and it fails no one
    assert store.check(now + 11) == []
    store._heartbeats["ingress-1"] = now + 10  # ingress-1 keeps beating, ingress-2 went silent
    assert store.check(now + 11) == [orphan.id]
    assert store.get(orphan.id).error.code == "ingress_lost" and store.get(running.id).active


def test_clients_that_disconnect_leave_no_job_behind(serve_app, client):
    """A client that hangs up (Serve then cancels its handler) cancels nothing: every job it got
    recorded runs to its end, from POST /v1/videos and from /sync mid-run."""
    before = {j["id"] for j in client.list(limit=100)["data"]}
    url = httpx.URL(serve_app.url)
    for i in range(4):  # hang up right after sending: before the 202, maybe before the job exists
        body = json.dumps({"prompt": f"a kite over the dunes {i}", "steps": 3, "seed": i, "cache": False}).encode()
        head = (
            f"POST /v1/videos HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {serve_app.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection((url.host, url.port)) as connection:
            connection.sendall(head.encode() + body)
    sync = {"prompt": "a kite in a storm over the dunes", "preset": "final", "steps": 12, "seed": 9, "cache": False}
    with pytest.raises(httpx.TimeoutException):  # gives up mid-run
        httpx.post(f"{serve_app.url}/v1/videos/sync", json=sync, headers=serve_app.headers, timeout=3)

    deadline = time.monotonic() + 180
    while True:
        new = [j for j in client.list(limit=100)["data"] if j["id"] not in before]
        if new and not any(j["status"] in ("queued", "in_progress") for j in new) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any(j["prompt"] == sync["prompt"] for j in new), "the /sync job was never recorded"
    assert [j["status"] for j in new] == ["completed"] * len(new), [(j["prompt"], j["status"], j["error"]) for j in new]


def test_a_deleted_job_takes_every_file_of_its_attempts_and_a_late_one_with_it(tmp_path, settings):
    """Delete answers once the record and every attempt's mp4 and latent are gone (a restart
    cannot bring the job back); a decode that lands after the delete (a cancelled job's stage was
    still running) is deleted once a stage's time has passed."""
    from contract.jobs import JobCreate, latent_key, video_key
    from contract.storage import OutputStore
    from stages.job_store import JobStore

    output = OutputStore(str(tmp_path))
    store = JobStore(output, stage_timeout=60)
    request = GenerationRequest.build(settings, prompt="a cat", seed=1, min_physics_score=0.5, max_retries=2)
    job = store.create(JobCreate(request=request, model_id="m", steps_total=10)).job
    for attempt in range(3):  # the first video and two repairs, none kept: the job failed
        output.write(video_key(job.id, attempt), b"mp4")
        output.write(latent_key(job.id, attempt), b"latent")
    store.fail(job.id, JobError(code="generation_failed", message="boom"))

    assert store.delete(job.id)
    assert [k for k in output.keys("videos") if job.id in k] == [] and not output.exists(f"jobs/{job.id}.json")
    assert JobStore(output).get(job.id) is None

    output.write(video_key(job.id, 1), b"a late decode")
    store.check(now=time.time() + 30)
    assert store.flush(timeout=10) and output.exists(video_key(job.id, 1))  # a stage may still be running
    store.check(now=time.time() + 61)
    assert store.flush(timeout=10) and not output.exists(video_key(job.id, 1))


def test_half_written_files_never_break_a_restart(tmp_path, settings):
    """A SIGKILL during a write leaves a temp file or a cut record: never listed, or skipped and
    counted, and everything else loads."""
    from cluster.manifest import MANIFEST, PARTS, Manifest
    from contract.jobs import JobCreate
    from contract.storage import OutputStore
    from stages.job_store import JobStore

    output = OutputStore(str(tmp_path))
    store = JobStore(output)
    request = GenerationRequest.build(settings, prompt="a cat", seed=1)
    kept = store.create(JobCreate(request=request, model_id="m", steps_total=10)).job
    assert store.flush(timeout=10)
    record = (tmp_path / "jobs" / f"{kept.id}.json").read_bytes()
    (tmp_path / "jobs" / f"{kept.id}.json.3f2a.tmp").write_bytes(record[:20])  # a write cut short
    (tmp_path / "jobs" / "video_cut.json").write_bytes(record[: len(record) // 2])  # a record cut short
    # a record the filesystem cannot read (EIO, as a failing disk or a dropped mount gives)
    (tmp_path / "jobs" / "video_eio.json").symlink_to("/proc/self/mem")
    assert sorted(output.keys("jobs")) == sorted([f"jobs/{kept.id}.json", "jobs/video_cut.json", "jobs/video_eio.json"])

    restarted = JobStore(output)
    assert restarted.get(kept.id) == kept
    assert sorted(restarted.unreadable) == ["jobs/video_cut.json", "jobs/video_eio.json"]

    manifest = Manifest(output)
    manifest.record({"id": "a", "status": "completed", "request_hash": "h"})
    output.write(f"{PARTS}/99999999999999999999-broken.parquet", b"PAR1 cut short")
    (tmp_path / f"{MANIFEST}.77.tmp").write_bytes(b"PAR1")
    resumed = Manifest(output)
    assert set(resumed.load()) == {"a"} and resumed.unreadable == [f"{PARTS}/99999999999999999999-broken.parquet"]
    assert resumed.compact(["a"]).num_rows == 1
    assert output.exists(f"{PARTS}/99999999999999999999-broken.parquet")  # kept for a person to look at


def test_a_stopping_ingress_finishes_its_jobs_within_the_drain_limit():
    """What Serve runs when it stops an ingress replica (scale-down, redeploy): its job service
    waits for the replica's jobs, up to serving.drain_seconds, then cancels the rest (each then
    records itself as interrupted) before the replica goes."""
    from contract.settings import ServingSettings, Settings
    from deployments.job_service import JobService

    service = object.__new__(JobService)

    async def scenario():
        service.settings = Settings(serving=ServingSettings(drain_seconds=5))
        finished = asyncio.Event()

        async def job():
            await asyncio.sleep(0.5)
            finished.set()

        service._tasks = {asyncio.create_task(job())}
        await service.drain()
        assert finished.is_set()

        service.settings = Settings(serving=ServingSettings(drain_seconds=0.3))
        endless = asyncio.create_task(asyncio.sleep(60))
        service._tasks = {endless}
        start = time.monotonic()
        await service.drain()
        assert time.monotonic() - start < 3  # the limit holds
        assert endless.cancelled()  # cancelled while the replica lives: its job records how it ended

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="must leave the ingress"):  # Serve would kill it mid-drain
        Settings(serving=ServingSettings(drain_seconds=200))


def test_a_request_cancelled_while_the_ingress_loads_leaves_the_load_to_the_others():
    """Requests that come before the job service has loaded the model's configs wait for it; one
    whose client went away (its handler cancelled) must not cancel what every request waits on."""
    import concurrent.futures

    from deployments.job_service import JobService

    service = object.__new__(JobService)
    service._runner = concurrent.futures.Future()

    async def scenario():
        gone, waiting = asyncio.create_task(service.runner()), asyncio.create_task(service.runner())
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        assert not service._runner.cancelled()
        service._runner.set_result("the runner")
        assert await waiting == "the runner" and await service.runner() == "the runner"
        assert gone.cancelled()

    asyncio.run(scenario())


def test_an_ingress_scaled_down_under_load_finishes_its_jobs(serve_app, tmp_path):
    """Serve stops one of two ingress replicas while both run jobs (a job is background work,
    not a request, so to Serve the replica looks idle): the stopped one finishes its jobs before
    it goes. The scale-down is a redeploy with one replica fewer, the path Serve's autoscaler
    takes too, but at a moment the test chooses: after both replicas took jobs. (A replica
    still loading the model's configs answers Serve's queue-length probes late, so the proxy
    sends everything to the other one until it is done.) A second app on the session's
    cluster, so the first keeps its replicas."""
    from ray import serve
    from ray.util.state import list_actors

    from cluster.app import bind_app
    from contract.settings import DeploymentSettings

    name = "t2v-scale"
    deployments = {n: d.model_copy(update={"num_cpus": 0.01}) for n, d in serve_app.settings.deployments.items()}

    def with_ingresses(count: int):
        # a drain with room: on a slow machine the jobs can take longer than the default's 120 s
        ingress = deployments["Ingress"].model_copy(
            update={
                "min_replicas": count,
                "initial_replicas": count,
                "max_replicas": count,
                "downscale_delay_s": 1,
                "graceful_shutdown_timeout_s": 290,
            }
        )
        assert isinstance(ingress, DeploymentSettings)
        return bind_app(settings.model_copy(update={"deployments": {**deployments, "Ingress": ingress}}))

    serving = serve_app.settings.serving.model_copy(
        update={"output_uri": str(tmp_path / "outputs"), "max_active_jobs": 16, "drain_seconds": 280}
    )
    settings = serve_app.settings.model_copy(update={"cache_dir": tmp_path / "cache", "serving": serving})

    def ingress_replicas() -> dict[str, int]:
        actors = list_actors(filters=[("class_name", "=", f"ServeReplica:{name}:Ingress"), ("state", "=", "ALIVE")])
        return {a.name.rsplit("#", 1)[-1]: a.pid for a in actors}

    serve.run(with_ingresses(2), name=name, route_prefix="/scale")
    deleted = False
    try:
        with httpx.Client(base_url=f"{serve_app.url}/scale", headers=serve_app.headers, timeout=120) as http:
            body = {"preset": "final", "steps": 12, "cache": False}
            # jobs go in until both replicas run some (the record, written before the answer, names its runner)
            ids: list[str] = []
            runners: set[str] = set()
            while len(ids) < 4 or len(runners) < 2:
                assert len(ids) < 12, f"the proxy sent every job to one ingress replica: {runners}"
                job = {**body, "prompt": f"a kite at dusk {len(ids)}", "seed": len(ids)}
                ids.append(http.post("/v1/videos", json=job).raise_for_status().json()["id"])
                runners.add(json.loads((tmp_path / "outputs" / "jobs" / f"{ids[-1]}.json").read_text())["runner"])
                if len(ids) >= 4:
                    time.sleep(0.5)
            scaling = threading.Thread(
                target=serve.run, args=(with_ingresses(1),), kwargs={"name": name, "route_prefix": "/scale"}
            )
            scaling.start()
            deadline = time.monotonic() + 300  # the stopped replica goes once its jobs are done
            while len(survivors := ingress_replicas()) > 1:
                assert time.monotonic() < deadline, "Serve never stopped the second ingress replica"
                time.sleep(0.5)
            scaling.join(300)
            jobs = []
            for video_id in ids:
                until = time.monotonic() + 300
                while (job := http.get(f"/v1/videos/{video_id}").json())["status"] in ("queued", "in_progress"):
                    assert time.monotonic() < until, job
                    time.sleep(1)
                jobs.append(job)
        assert [j["status"] for j in jobs] == ["completed"] * len(jobs), [j["error"] for j in jobs if j["error"]]
        runners = {json.loads((tmp_path / "outputs" / "jobs" / f"{i}.json").read_text())["runner"] for i in ids}
        assert runners - set(survivors), "no job ran on the replica that was stopped"

        # The whole app deleted under running jobs: its job store and stages go too, so the jobs
        # end at once, each recorded as interrupted (no drain waited out for nothing).
        with httpx.Client(base_url=f"{serve_app.url}/scale", headers=serve_app.headers, timeout=120) as http:
            body = {"preset": "final", "steps": 60, "cache": False}
            running = [
                http.post("/v1/videos", json={**body, "prompt": f"a long kite flight {i}", "seed": 100 + i})
                .raise_for_status()
                .json()["id"]
                for i in range(2)
            ]
            deadline = time.monotonic() + 120
            while any(http.get(f"/v1/videos/{i}").json()["status"] != "in_progress" for i in running):
                assert time.monotonic() < deadline, "the jobs never started"
                time.sleep(0.2)
        start = time.monotonic()
        serve.delete(name)
        deleted, took = True, time.monotonic() - start
        records = [json.loads((tmp_path / "outputs" / "jobs" / f"{i}.json").read_text()) for i in running]
        assert [(r["status"], r["error"]["code"]) for r in records] == [("failed", "interrupted")] * 2, records
        assert "the app was stopped" in records[0]["error"]["message"] and took < 60, (took, records[0]["error"])
    finally:
        if not deleted:
            with httpx.Client(base_url=f"{serve_app.url}/scale", headers=serve_app.headers, timeout=60) as http:
                for job in http.get("/v1/videos", params={"limit": 100}).json().get("data", []):
                    if job["status"] in ("queued", "in_progress"):  # a failed test leaves nothing to drain
                        http.delete(f"/v1/videos/{job['id']}")
            serve.delete(name)
