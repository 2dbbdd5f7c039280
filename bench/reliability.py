"""Reliability figures on a fresh local cluster: fuzzing, faults per stage, an overload burst.

    python -m bench.reliability [--examples 50] [--burst 5]

On the default model (or `T2V_MODEL`), one local Ray cluster with the Serve app (API keys
on, `max_active_jobs` 8):

(a) fuzzing: requests generated from the app's own OpenAPI spec (schemathesis), valid and
    invalid, `--examples` per operation and mode; counts by outcome and replicas that died;
(b) faults: for the ingress, the job store and each stage, one job caught in it and its
    replica killed with SIGKILL; how the job ended, seconds until Serve had replaced the
    replica, and jobs lost (never reaching a final state);
(c) overload: `--burst` x max_active_jobs preview requests at once; accepted, rejected
    (503 + Retry-After), p50/p99 seconds to the rejection, accepted jobs completed, and the
    peak resident memory of the Ray processes against before the burst.

Prints tables, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.toolkit import cluster_run, log, model_settings, percentile, rounded
from cluster.client import T2VClient
from cluster.launch import APP_NAME, deploy, free_port, start_private_ray
from contract.settings import ServingSettings, Settings

DEPLOYMENTS = ("Ingress", "JobStore", "TextEncoder", "HighNoiseExpert", "LowNoiseExpert", "Decoder")
STAGE_OF = {
    "TextEncoder": "encode",
    "HighNoiseExpert": "high_noise",
    "LowNoiseExpert": "low_noise",
    "Decoder": "decode",
    "JobStore": "high_noise",
    "Ingress": "high_noise",
}
FUZZ_SKIP = {"POST /v1/videos/sync"}  # holds a connection per generation; same validation as POST /v1/videos


# -- helpers shared with the tests ------------------------------------------------------------


def keyed_app(name: str, key: str, max_active_jobs: int = 8) -> tuple[Settings, Path, str]:
    """The app as the reliability benchmarks run it: API keys on, a bounded queue, its own
    cache and outputs in a work folder and its own Ray temp dir. Returns both with it."""
    work, ray_dir = Path(tempfile.mkdtemp(prefix=f"t2v-{name}-")), f"/tmp/t2v-{name}-{os.getpid()}"
    serving = ServingSettings(
        port=free_port(),
        output_uri=str(work / "outputs"),
        ray_temp_dir=ray_dir,
        max_active_jobs=max_active_jobs,
        api_keys=[key],
    )
    return model_settings().model_copy(update={"cache_dir": work / "cache", "serving": serving}), work, ray_dir


def replica_pids(deployment: str) -> list[int]:
    """PIDs of the live replicas of one deployment of the app (Ray's state API)."""
    from ray.util.state import list_actors

    actors = list_actors(
        filters=[("class_name", "=", f"ServeReplica:{APP_NAME}:{deployment}"), ("state", "=", "ALIVE")]
    )
    return sorted(a.pid for a in actors)


def wait_replaced(deployment: str, dead: list[int], timeout: float = 180) -> list[int]:
    """Block until Serve runs a replica of `deployment` that is not among `dead`, healthy."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = replica_pids(deployment)
        status = serve.status().applications[APP_NAME]
        if pids and not set(pids) & set(dead) and status.deployments[deployment].status == "HEALTHY":
            return pids
        time.sleep(0.5)
    raise TimeoutError(f"{deployment} not replaced within {timeout} s")


def wait_record(client: T2VClient, video_id: str, predicate, timeout: float = 300) -> dict:
    """Poll a job through ingress restarts (the proxy answers errors meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            job = client.retrieve(video_id)
            if predicate(job):
                return job
        time.sleep(0.05)
    raise TimeoutError(video_id)


def fuzz(url: str, headers: dict[str, str], examples: int) -> tuple[dict[str, int], list[str]]:
    """`examples` generated requests per operation and mode (valid, invalid). Returns counts by
    outcome and the server errors other than the designed 503 queue_full."""
    import hypothesis
    import schemathesis
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    counts = {"requests": 0, "2xx": 0, "4xx": 0, "503_queue_full": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in FUZZ_SKIP:
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                verbosity=hypothesis.Verbosity.quiet,
            )
            def send(case) -> None:
                response = case.call(base_url=url, headers=headers, timeout=60)
                counts["requests"] += 1
                status = response.status_code
                if (
                    status == 503
                    and response.json()["error"]["code"] == "queue_full"
                    and "retry-after" in response.headers
                ):
                    counts["503_queue_full"] += 1  # overload, answered as designed
                elif status >= 500:
                    failures.append(f"{status} {case.as_curl_command()}: {response.text[:300]}")
                else:
                    counts[f"{status // 100}xx"] = counts.get(f"{status // 100}xx", 0) + 1

            try:
                send()
            except hypothesis.errors.Unsatisfiable:  # nothing to make invalid (e.g. no parameters)
                pass
    counts["5xx"] = len(failures)
    return counts, failures


def cancel_active(client: T2VClient) -> None:
    for job in client.list(limit=100)["data"]:
        if job["status"] in ("queued", "in_progress"):
            client.delete(job["id"])


# -- (b) faults --------------------------------------------------------------------------------


def fault(client: T2VClient, deployment: str, runner_lost: float) -> dict:
    """One job caught in `deployment`'s work, its replica killed; how it ended."""
    (pid,) = replica_pids(deployment)
    stage = STAGE_OF[deployment]
    job_id = client.create(
        f"a lighthouse in a storm, {deployment} fault", preset="final", steps=12, seed=7, cache=False
    )["id"]
    if deployment != "TextEncoder":  # encoding takes milliseconds: killed with the job on its way in
        wait_record(client, job_id, lambda j: j["stage"] == stage, timeout=120)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_replaced(deployment, [pid])
    recovered = time.monotonic() - killed
    try:
        job = wait_record(
            client, job_id, lambda j: j["status"] not in ("queued", "in_progress"), timeout=runner_lost + 300
        )
        outcome = job["status"] if job["status"] == "completed" else f"failed: {job['error']['code']}"
        retries, lost = job["retries"], False
    except TimeoutError:
        outcome, retries, lost = "still active", None, True
    after = client.wait(client.create(f"a harbour after the {deployment} fault", steps=3, seed=8)["id"])
    return {"outcome": outcome, "retries": retries, "lost": lost, "replaced_s": recovered, "next_job": after["status"]}


# -- (c) overload ------------------------------------------------------------------------------


def ray_rss() -> int:
    """Resident bytes of every Ray process on this machine (workers, raylet, GCS, dashboard)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if b"ray" not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def burst(url: str, headers: dict[str, str], n: int) -> dict:
    client = T2VClient(url, headers["Authorization"].split()[1])
    baseline = ray_rss()
    peak, stop = [baseline], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak.append(ray_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def post(i: int) -> tuple[int, float, str | None]:
        start = time.perf_counter()
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            response = http.post(
                "/v1/videos", json={"prompt": f"a swarm of fireflies, burst {i}", "steps": 4, "seed": i, "cache": False}
            )
        elapsed = time.perf_counter() - start
        ok = response.status_code == 202 or response.headers.get("retry-after")
        return response.status_code if ok else -response.status_code, elapsed, response.json().get("id")

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(post, range(n)))
    accepted = [r for r in results if r[0] == 202]
    rejected = [r for r in results if r[0] == 503]
    finished = [client.wait(r[2], timeout=900)["status"] for r in accepted]
    stop.set()
    sampler.join()
    rejection = [r[1] for r in rejected]
    return {
        "burst": n,
        "accepted": len(accepted),
        "rejected_503": len(rejected),
        "other": len(results) - len(accepted) - len(rejected),
        "rejection_p50_s": percentile(rejection, 0.5) if rejection else None,
        "rejection_p99_s": percentile(rejection, 0.99) if rejection else None,
        "accepted_completed": finished.count("completed"),
        "rss_before_mib": baseline / 2**20,
        "rss_peak_mib": max(peak) / 2**20,
    }


def print_tables(result: dict) -> None:
    f = result["fuzz"]
    print("\n(a) schema fuzzing (schemathesis, from /openapi.json)")
    print(
        f"requests {f['requests']}: 2xx {f['2xx']}, 4xx {f['4xx']}, 503 queue_full {f['503_queue_full']}, "
        f"other 5xx {f['5xx']}; replicas died: {result['fuzz_replicas_died']}"
    )
    print("\n(b) faults: one job in the stage, its replica SIGKILLed")
    print(f"{'replica killed':<17}{'job ended':<24}{'re-runs':>8}{'replaced s':>11}  next job")
    for name, r in result["faults"].items():
        print(f"{name:<17}{r['outcome']:<24}{str(r['retries']):>8}{r['replaced_s']:>11.1f}  {r['next_job']}")
    print(f"jobs lost: {sum(r['lost'] for r in result['faults'].values())}")
    b = result["burst"]
    print(f"\n(c) burst of {b['burst']} (max_active_jobs {result['max_active_jobs']})")
    print(
        f"accepted {b['accepted']} (completed {b['accepted_completed']}), rejected 503 {b['rejected_503']}, "
        f"other {b['other']}; rejection p50 {b['rejection_p50_s']:.3f} s, p99 {b['rejection_p99_s']:.3f} s"
    )
    print(f"Ray processes' RSS: {b['rss_before_mib']:.0f} MiB before, {b['rss_peak_mib']:.0f} MiB peak\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="fuzzed requests per operation and mode")
    parser.add_argument("--burst", type=int, default=5, help="burst size, in multiples of max_active_jobs")
    args = parser.parse_args(argv)

    key = "bench-key-0123456789"
    settings, work, ray_dir = keyed_app("br", key)
    headers = {"Authorization": f"Bearer {key}"}
    result: dict = {"benchmark": "reliability", "max_active_jobs": 8}
    with contextlib.redirect_stdout(sys.stderr), cluster_run(ray_dir, work):
        start_private_ray(ray_dir, 4, dashboard=True, log_to_driver=False)
        url = deploy(settings)
        client = T2VClient(url, key, timeout=60)
        log("(a) fuzzing")
        before = {d: replica_pids(d) for d in DEPLOYMENTS}
        result["fuzz"], failures = fuzz(url, headers, args.examples)
        for failure in failures[:10]:
            log(f"5xx: {failure}")
        cancel_active(client)
        result["fuzz_replicas_died"] = sum(len(set(before[d]) - set(replica_pids(d))) for d in DEPLOYMENTS)
        log("(b) faults")
        result["faults"] = {d: fault(client, d, settings.serving.runner_lost_seconds) for d in DEPLOYMENTS}
        log("(c) burst")
        result["burst"] = burst(url, headers, args.burst * 8)
    result["jobs_lost"] = sum(r["lost"] for r in result["faults"].values())
    print_tables(result)
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
