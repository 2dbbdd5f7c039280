"""Serving against the in-process pipeline, side by side in one run: latency, throughput, startup.

On the default model (or `T2V_MODEL`), in one run:

(a) latency: one POST /v1/videos/sync against one in-process `Pipeline(request)`, per preset,
    interleaved repeat by repeat with the same seed on both sides (median seconds);
(b) throughput: N preview requests through HTTP at concurrency C against the same N run one
    after the other in process (videos per minute), with p50/p95 latency of the HTTP requests
    and each stage's busy fraction during the burst, read from the jobs' traces; the CPU
    seconds per video of every process by role (bench/cpu.py), and the ceilings they set:
    cores / the least CPU one video needs (the pipeline on one thread), and, served, cores /
    (that + the control plane's CPU per video: ingress, job store, Ray and Serve);
(c) startup: `t2v serve` as a subprocess, seconds to the first GET /healthz 200 and to the
    first video (POST /v1/videos/sync 200), and whether Ctrl-C stops it cleanly.

The in-process side runs with torch's default thread count (what `t2v generate` gets) and,
as an extra row, with one thread; the replicas' threads are set per deployment
(`DeploymentSettings.threads`, else Ray's OMP_NUM_THREADS=1 for fractional-CPU actors).

    python -m bench.serve [--repeats 3] [--requests 16] [--concurrency 8] [--rounds 3]

Prints tables, then one JSON object as the last line of stdout. Ray's logs stay in its temp
dirs (removed after a successful run, kept and named on stderr after a failed one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from bench.cpu import BENCHMARK, CpuMeter, ceiling, control_plane
from bench.toolkit import BIN_DIR, cluster_run, log, percentile, rounded
from cluster.launch import free_port, start_private_ray
from cluster.pipeline import Pipeline
from contract.request import GenerationRequest
from contract.settings import Settings

PRESETS = ("final", "preview")  # final first: the goal is set there
STAGES = ("encode", "high_noise", "low_noise", "decode", "mp4", "score")
GOALS = {"latency_ratio": 1.10, "throughput_ratio": 1.5, "startup_s": 30}


def cpu_busy(seconds: float = 5.0) -> float | None:
    """Cores busy machine-wide over `seconds` (from /proc/stat): what else is running."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total, idle = sample()
        time.sleep(seconds)
        total2, idle2 = sample()
    except OSError:
        return None
    return (os.cpu_count() or 1) * (1 - (idle2 - idle) / max(total2 - total, 1))


def median_dict(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


# -- (c) startup -----------------------------------------------------------------------------


# Serve's controller log: "Replica(id='..', deployment='Decoder', app='t2v') started successfully on
# node '..' after 5.3s (PID: ..). Replica constructor, reconfigure method, and initial health check took 4.1s."
REPLICA_UP = re.compile(r"deployment='(\w+)'.*?started successfully.*? after ([\d.]+)s.*?took ([\d.]+)s")


def replica_seconds(ray_dir: str) -> dict[str, dict[str, float]]:
    """Per deployment, its slowest replica: seconds from being scheduled to up, and of those its
    constructor (imports, weights) and first health check, from Serve's controller log."""
    up: dict[str, dict[str, float]] = {}
    for path in Path(ray_dir).glob("**/session_latest/logs/serve/controller_*.log"):
        for deployment, total, own in REPLICA_UP.findall(path.read_text(errors="replace")):
            if float(total) >= up.get(deployment, {}).get("up_s", -1):
                up[deployment] = {"up_s": float(total), "constructor_s": float(own)}
    return up


def bench_startup(settings: Settings, work: Path, prompt: str, timeout: float) -> dict:
    """`t2v serve` in its own Ray cluster: seconds to /healthz 200 and to the first video."""
    ray_dir = f"/tmp/t2v-bs-{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": ray_dir,
        "T2V_SERVING__RAY_TEMP_DIR": ray_dir,
        "T2V_CACHE_DIR": str(settings.cache_dir),  # the default model is built there already
        "T2V_SERVING__OUTPUT_URI": str(work / "serve-outputs"),
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONFAULTHANDLER": "1",
        **({"T2V_MODEL": str(settings.model)} if settings.model else {}),
    }
    env.pop("RAY_ADDRESS", None)  # its own RAY_TMPDIR: `t2v serve` starts a cluster of its own

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "t2v-serve.log"
    out: dict = {}
    with open(log_path, "wb") as log_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "t2v"), "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group
        )
    try:
        with httpx.Client(base_url=url, timeout=10) as http:

            def until(ok) -> float:
                deadline = start + timeout
                while time.perf_counter() < deadline:
                    if proc.poll() is not None:
                        raise RuntimeError(f"t2v serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                    try:
                        if ok():
                            return time.perf_counter() - start
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                raise TimeoutError(f"t2v serve not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")

            out["healthz_s"] = until(lambda: http.get("/healthz").status_code == 200)
            log(f"startup: /healthz 200 after {out['healthz_s']:.1f}s")
            request_start = []

            def first_video() -> bool:
                request_start[:] = [time.perf_counter()]
                body = {"prompt": prompt, "seed": 0}
                return http.post("/v1/videos/sync", json=body, timeout=timeout).status_code == 200

            out["first_video_s"] = until(first_video)
            out["first_request_s"] = start + out["first_video_s"] - request_start[0]
            log(f"startup: first video after {out['first_video_s']:.1f}s ({out['first_request_s']:.1f}s request)")
        # Its own cluster, as a user's first `t2v serve` has: Ray wrote its session into our temp dir.
        out["own_cluster"] = os.path.isdir(os.path.join(ray_dir, "session_latest"))
    finally:
        stop = time.perf_counter()
        # Ctrl-C signals the whole foreground process group; Ray's own processes block SIGINT.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out["exit_code"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            out["exit_code"] = None
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            log(f"t2v serve ignored SIGINT for 60s; its log ends:\n{log_path.read_text()[-6000:]}")
        out["stop_s"] = time.perf_counter() - stop
        out["leftovers"] = leftovers(proc.pid)
        out["leftovers_killed"] = bool(out["leftovers"])
        if out["leftovers"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out["replicas"] = replica_seconds(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    out["clean_exit"] = out["exit_code"] == 0 and not out["leftovers_killed"]
    log(
        f"startup: SIGINT -> exit {out['exit_code']} after {out['stop_s']:.1f}s, left running: {out['leftovers'] or 'nothing'}"
    )
    return out


def leftovers(group: int, grace: float = 10.0) -> list[str]:
    """What is still running in the session `t2v serve` leads, after `grace` seconds for its
    Ray processes to finish exiting (they may outlive it by a moment): one line per process."""
    deadline = time.monotonic() + grace
    while True:
        ps = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(group)], capture_output=True, text=True)
        left = [line.strip()[:160] for line in ps.stdout.splitlines() if line.strip()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


# -- (a) latency -----------------------------------------------------------------------------


class Sides:
    """One request run three ways: over HTTP, and in process with default and with 1 torch thread
    (`single`: a pipeline whose experts run a guided step's forwards one after the other)."""

    def __init__(self, settings: Settings, pipeline: Pipeline, single: Pipeline, http: httpx.Client, threads: int):
        self.settings, self.pipeline, self.single, self.http, self.threads = settings, pipeline, single, http, threads

    def request(self, prompt: str, seed: int, preset: str) -> GenerationRequest:
        return GenerationRequest.build(self.settings, prompt=prompt, seed=seed, preset=preset)

    def post(self, request: GenerationRequest) -> tuple[float, str]:
        """One sync request: client-side seconds (mp4 received) and the job id."""
        body = {"prompt": request.prompt, "seed": request.seed, "preset": request.preset}
        start = time.perf_counter()
        response = self.http.post("/v1/videos/sync", json=body)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"POST /v1/videos/sync: {response.status_code} {response.text[:500]}")
        return elapsed, response.headers["x-video-id"]

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/videos/{job_id}").json()

    def http_run(self, request: GenerationRequest) -> dict:
        wall, job_id = self.post(request)
        timings = self.job(job_id)["timings"]
        return {"wall": wall, **{s: timings.get(s, 0.0) for s in ("queue", *STAGES)}}

    def local_run(self, request: GenerationRequest, threads: int) -> dict:
        torch.set_num_threads(threads)
        pipeline = self.single if threads == 1 else self.pipeline
        try:
            start = time.perf_counter()
            result = pipeline(request)
            return {"wall": time.perf_counter() - start, **{s: result.timings.get(s, 0.0) for s in STAGES}}
        finally:
            torch.set_num_threads(self.threads)

    def run(self, side: str, request: GenerationRequest) -> dict:
        if side == "http":
            row = self.http_run(request)
        else:
            row = self.local_run(request, 1 if side == "local_1t" else self.threads)
        # other: wall time outside every stage (for HTTP: the request, handoffs between replicas, job records)
        return {**row, "other": row["wall"] - sum(v for k, v in row.items() if k != "wall")}


SIDES = ("http", "local", "local_1t")


def bench_latency(sides: Sides, prompt: str, seed: int, preset: str, repeats: int) -> dict:
    for side in SIDES:  # warm-up: first calls allocate, compile kernels, open connections
        sides.run(side, sides.request(prompt, seed, preset))
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(repeats):
        request = sides.request(prompt, seed + 1 + i, preset)  # a new seed per repeat, the same for every side
        # Rotate who goes first so drift on a noisy machine hits every side alike.
        for side in SIDES[i % 3 :] + SIDES[: i % 3]:
            runs[side].append(sides.run(side, request))
        log(f"latency {preset} {i + 1}/{repeats}: " + ", ".join(f"{s} {runs[s][-1]['wall']:.3f}s" for s in SIDES))
    med = {side: median_dict(rows) for side, rows in runs.items()}
    return {
        "http_s": med["http"]["wall"],
        "inprocess_s": med["local"]["wall"],
        "inprocess_1t_s": med["local_1t"]["wall"],
        "ratio": med["http"]["wall"] / med["local"]["wall"],
        "ratio_1t": med["http"]["wall"] / med["local_1t"]["wall"],
        "stages": med,  # median seconds per stage and side (http: measured on the replicas, plus queue)
    }


# -- (b) throughput --------------------------------------------------------------------------


def burst(sides: Sides, requests: list[GenerationRequest], concurrency: int) -> dict:
    """Every request over HTTP, `concurrency` at a time (sync POSTs from a thread pool)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(sides.post, requests))
    wall = time.perf_counter() - start
    # Busy fraction: the stage's span seconds over the burst's wall time. Above 1 means
    # several jobs (or replicas) ran that stage at once.
    busy = {s: 0.0 for s in STAGES}
    replicas: dict[str, set] = {s: set() for s in STAGES}
    for _, job_id in done:
        for span in sides.job(job_id)["trace"]:
            busy[span["stage"]] += span["end"] - span["start"]
            replicas[span["stage"]].add(span["replica"])
    return {
        "wall": wall,
        "latencies": [elapsed for elapsed, _ in done],
        "busy": {s: busy[s] / wall for s in STAGES},
        "replicas": {s: len(replicas[s]) for s in STAGES},
    }


def sequential(sides: Sides, requests: list[GenerationRequest], threads: int) -> float:
    start = time.perf_counter()
    for request in requests:
        sides.local_run(request, threads)
    return time.perf_counter() - start


def bench_throughput(sides: Sides, prompt: str, seed: int, n: int, concurrency: int, rounds: int) -> dict:
    requests = [sides.request(prompt, seed + 100 + i, "preview") for i in range(n)]
    walls: dict[str, list[float]] = {"http": [], "local": [], "local_1t": []}
    cpu: dict[str, list[dict[str, float]]] = {side: [] for side in walls}  # CPU s per video, by role
    bursts = []
    for r in range(rounds):
        # Back to back, order alternating by round, so drift on the machine hits both sides alike.
        for side in ("local", "local_1t", "http") if r % 2 == 0 else ("http", "local_1t", "local"):
            meter = CpuMeter().start()
            if side == "http":
                bursts.append(burst(sides, requests, concurrency))
                walls["http"].append(bursts[-1]["wall"])
            else:
                walls[side].append(sequential(sides, requests, 1 if side == "local_1t" else sides.threads))
            cpu[side].append({name: seconds / n for name, seconds in meter.stop().items()})
        log(
            f"throughput round {r + 1}/{rounds}: "
            + ", ".join(f"{s} {walls[s][-1]:.2f}s" for s in walls)
            + f"; replicas {bursts[-1]['replicas']}"
        )
    vpm = {side: 60 * n / statistics.median(w) for side, w in walls.items()}
    latencies = [x for b in bursts for x in b["latencies"]]
    roles = sorted({name for rows in cpu.values() for row in rows for name in row})
    cpu_per_video = {
        side: {name: statistics.median(row.get(name, 0.0) for row in rows) for name in roles}
        for side, rows in cpu.items()
    }
    # The least CPU one video needs: the pipeline alone on one thread (no intra-op overhead);
    # served, a video also costs the control plane's share, whatever the stages do.
    least = cpu_per_video["local_1t"][BENCHMARK]
    best = ceiling(os.cpu_count() or 1, least)
    served = ceiling(os.cpu_count() or 1, least + control_plane(cpu_per_video["http"]))
    return {
        "concurrency": concurrency,
        "requests": n,
        "rounds": rounds,
        "http_videos_per_min": vpm["http"],
        "sequential_videos_per_min": vpm["local"],
        "sequential_1t_videos_per_min": vpm["local_1t"],
        "ratio": vpm["http"] / vpm["local"],
        "ratio_1t": vpm["http"] / vpm["local_1t"],
        "p50_s": statistics.median(latencies),  # over every HTTP request of every round
        "p95_s": percentile(latencies, 0.95),
        "busy": median_dict([b["busy"] for b in bursts]),
        "replicas_per_round": [b["replicas"] for b in bursts],
        "cpu_s_per_video": cpu_per_video,
        "cpu_s_per_video_total": {side: sum(row.values()) for side, row in cpu_per_video.items()},
        "ceiling_videos_per_min": best,
        "ceiling_ratio": best / vpm["local"],
        "control_plane_cpu_s": control_plane(cpu_per_video["http"]),
        "served_ceiling_videos_per_min": served,
        "served_ceiling_ratio": served / vpm["local"],
    }


# -- report ----------------------------------------------------------------------------------


def print_tables(result: dict, threads: int) -> None:
    names = {"http": "http (replicas)", "local": f"in-process, {threads} threads", "local_1t": "in-process, 1 thread"}
    print("(a) latency, one request (median seconds)")
    print(f"{'preset':<8}{'http_s':>10}{'inproc_s':>10}{'ratio':>8}{'inproc1t_s':>12}{'ratio_1t':>10}")
    for preset, row in result["latency"].items():
        print(
            f"{preset:<8}{row['http_s']:>10.3f}{row['inprocess_s']:>10.3f}{row['ratio']:>8.2f}"
            f"{row['inprocess_1t_s']:>12.3f}{row['ratio_1t']:>10.2f}"
        )
    print("    per stage (median seconds; http stages as measured on the replicas)")
    columns = ("queue", *STAGES, "other", "wall")
    print(f"    {'preset':<8}{'side':<32}" + "".join(f"{c:>11}" for c in columns))
    for preset, row in result["latency"].items():
        for side, stages in row["stages"].items():
            print(
                f"    {preset:<8}{names[side]:<32}"
                + "".join(f"{stages[c]:>11.3f}" if c in stages else f"{'-':>11}" for c in columns)
            )
    t = result["throughput"]
    print(f"(b) throughput, {t['requests']} preview requests (median of {t['rounds']} rounds)")
    print(
        f"    http at concurrency {t['concurrency']}: {t['http_videos_per_min']:.1f} videos/min "
        f"(p50 {t['p50_s']:.2f}s, p95 {t['p95_s']:.2f}s per request)"
    )
    print(
        f"    sequential in-process, {threads} threads: {t['sequential_videos_per_min']:.1f} videos/min -> ratio {t['ratio']:.2f}"
    )
    print(
        f"    sequential in-process, 1 thread: {t['sequential_1t_videos_per_min']:.1f} videos/min -> ratio {t['ratio_1t']:.2f}"
    )
    print(
        "    stage busy fraction during the burst (span seconds / wall): "
        + ", ".join(f"{s} {v:.2f}" for s, v in t["busy"].items())
    )
    print("    CPU seconds per video, every process on the machine, by role (median of rounds)")
    sides = ("http", "local", "local_1t")
    print(f"    {'role':<56}" + "".join(f"{names[side]:>30}" for side in sides))
    per_video = t["cpu_s_per_video"]
    for name in sorted(per_video["http"], key=lambda n: -per_video["http"][n]):
        print(f"    {name:<56}" + "".join(f"{per_video[side].get(name, 0.0):>30.3f}" for side in sides))
    print(f"    {'total':<56}" + "".join(f"{t['cpu_s_per_video_total'][side]:>30.3f}" for side in sides))
    print(
        f"    ceiling: {result['cpus']} cores / {per_video['local_1t'][BENCHMARK]:.3f} CPU s per video (the pipeline "
        f"on one thread) = {t['ceiling_videos_per_min']:.1f} videos/min, {t['ceiling_ratio']:.2f}x the sequential "
        f"loop: no schedule on this machine can beat that"
    )
    print(
        f"    served ceiling: plus the control plane's {t['control_plane_cpu_s']:.3f} CPU s per video (ingress, job store, "
        f"Ray and Serve) = {t['served_ceiling_videos_per_min']:.1f} videos/min, {t['served_ceiling_ratio']:.2f}x the loop"
    )
    s = result["startup"]
    print(
        f"(c) startup: `t2v serve` -> /healthz 200 in {s['healthz_s']:.1f}s, first video in {s['first_video_s']:.1f}s "
        f"({s['first_request_s']:.1f}s request); Ctrl-C -> exit {s['exit_code']} in {s['stop_s']:.1f}s"
    )
    b = {k: "n/a" if v is None else f"{v:.2f}" for k, v in result["busy_cores"].items()}
    print(
        f"machine: {result['cpus']} cores; busy cores before the run {b['before']}, with the Serve app idle {b['serve_idle']}"
    )
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in result["met"].items()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed latency runs per side and preset (default 3)")
    parser.add_argument("--requests", type=int, default=16, help="preview requests per throughput run (default 16)")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds, order alternating (default 3)")
    parser.add_argument("--prompt", default="a red ball bouncing on a beach, cinematic")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--startup-timeout", type=float, default=300)
    args = parser.parse_args(argv)

    from cluster.launch import deploy
    from stages.default_model import default_model_dir

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Every request computes: with the latent cache on, a repeat (or the other side's run of
    # the same request) would be a cache hit. Harmless where Settings has no `cache`.
    os.environ["T2V_CACHE__ENABLED"] = "false"
    base = Settings()
    if base.model is None:
        default_model_dir(base.cache_dir)  # built before any timing: startup measures a warm cache
    threads = torch.get_num_threads()  # torch's default: what `t2v generate` gets
    work = Path(tempfile.mkdtemp(prefix="t2v-bench-"))
    ray_dir = f"/tmp/t2v-bench-{os.getpid()}"
    settings = base.model_copy(
        update={
            "serving": base.serving.model_copy(
                update={
                    "port": free_port(),
                    "output_uri": str(work / "outputs"),
                    "ray_temp_dir": ray_dir,
                    "max_active_jobs": max(32, 2 * args.requests),  # the burst must never meet a 503
                }
            )
        }
    )
    result: dict = {"benchmark": "serve", "busy_cores": {"before": cpu_busy()}}
    # A shell's background job inherits SIGINT ignored, and so would `t2v serve`: restore
    # Python's handler so the child gets SIGINT's default, as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Whatever Ray or a library prints goes to stderr: stdout carries only the tables and the JSON.
    with contextlib.redirect_stdout(sys.stderr), cluster_run(ray_dir, work):
        result["startup"] = bench_startup(settings, work, args.prompt, args.startup_timeout)
        # address="local": always a fresh cluster, never someone else's. 4 logical CPUs so
        # every deployment (and a second replica where autoscaling wants one) fits on 2 cores.
        start_private_ray(ray_dir, 4, log_to_driver=False)
        torch.set_num_threads(threads)
        url = deploy(settings)
        pipeline = Pipeline.from_settings(settings)
        single = Pipeline.from_settings(settings.model_copy(update={"parallel_guidance": False}))
        # The in-process side runs beside the idle cluster: this is what that costs.
        result["busy_cores"]["serve_idle"] = cpu_busy()
        log(
            f"deployed at {url}; in process: model {pipeline.model_id}, {threads} torch threads; "
            f"busy cores: {result['busy_cores']}"
        )
        with httpx.Client(base_url=url, timeout=600) as http:
            sides = Sides(settings, pipeline, single, http, threads)
            result["latency"] = {p: bench_latency(sides, args.prompt, args.seed, p, args.repeats) for p in PRESETS}
            result["throughput"] = bench_throughput(
                sides, args.prompt, args.seed, args.requests, args.concurrency, args.rounds
            )

    result["goals"] = GOALS
    result["met"] = {
        "latency_ratio": result["latency"]["final"]["ratio"] <= GOALS["latency_ratio"],
        "throughput_ratio": result["throughput"]["ratio"] >= GOALS["throughput_ratio"],
        "startup_s": result["startup"]["healthz_s"] <= GOALS["startup_s"],
    }
    # Whether any schedule could meet the throughput goal on this machine (bench/cpu.py), and
    # any schedule of the stages behind this control plane.
    result["throughput_goal_reachable"] = result["throughput"]["ceiling_ratio"] >= GOALS["throughput_ratio"]
    result["throughput_goal_reachable_served"] = (
        result["throughput"]["served_ceiling_ratio"] >= GOALS["throughput_ratio"]
    )
    result.update(threads=threads, cpus=os.cpu_count(), repeats=args.repeats)
    print_tables(result, threads)
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
