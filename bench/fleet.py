"""A simulated GPU fleet on this machine: the real cluster at 8 and 32 GPUs. SIMULATED GPUs.

    python -m bench.fleet [--gpus 8 32] [--size 1280x720] [--rate 3] [--window 48] [--output-uri s3://...]

The fleets run one after another on one local multi-node Ray cluster (`ray.cluster_utils.Cluster`:
a GPU-less head for the ingress, job store, text encoder and decoder, and workers with 8 logical
GPUs each), each the real Serve app with `device: sim`: every stage's real code path - HTTP,
ingress, job store, handles, hand-offs, caches, metrics, placement on `num_gpus` - with the
model compute replaced by the cost model's seconds (sim/gpu.py, docs/scaling.md).
Experts hold one logical GPU per replica, split between the two as `t2v plan --gpus N` says.
Every figure is in simulated seconds (wall seconds / `sim.time_scale`; the scale is chosen per
fleet so that this 2-core machine's control plane keeps up) and is labelled SIMULATED.

Measured, side by side in one run:
- saturation throughput over ideal: `2 x GPUs` requests in flight over HTTP (`POST
  /v1/videos/sync`), the completion rate (a least-squares slope) over `--window` completions
  between the first wave and the drain, against ideal = GPUs / (expert GPU-seconds per
  video). Goal >= 0.95;
- latency at low load over pure compute: one request at a time, p50 against the cost model's
  seconds for the video (encode + every step + decode); the time outside the simulated GPUs
  (HTTP, ingress, hand-offs, job store, mp4, scorer) is this machine's wall time, unscaled, as it
  would be on a real cluster. Goal <= 1.02;
- the template cache in GPU-seconds per video: variants of one template against the same
  requests uncached, in this process on the same simulated stages. Goal <= 0.45;
- batching in an expert replica under the cost model, on and off, at 480p and 720p with 8 and 32
  requests in flight (one replica per stage, in this process): throughput and p95 latency;
- control-plane capacity: compute at zero, the most jobs a second this 2-core machine serves
  and its CPU seconds per job by process. Goal >= 20 jobs/s;
- disaggregated against co-located experts (every GPU running both, swapping where it cannot
  hold the two) on H100s and L40Ss: videos per hour per GPU;
- the autoscaling ramp: closed-loop clients 1 -> 16 -> 1 with Poisson think times on a fleet
  whose experts scale from one replica each; replicas and requests in flight over time (a PNG,
  `--plot`), the wall seconds to Serve's decision, to added capacity and back, failed requests.
With `--output-uri` the fleets keep job records and videos on that store (e.g. an S3 bucket).

Prints tables, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.toolkit import log, model_settings
from cluster.launch import free_port, ray_environment
from cluster.sizing import ExpertSplit, expert_split
from contract.experts import ExpertKind
from contract.settings import Limits, Settings, SimSettings
from contract.storage import OutputStore, child_uri
from sim.cost_model import GPUS, SWAPS_PER_VIDEO, CostModel

APP = "t2v-fleet"
GPUS_PER_NODE = 8
WALL_VIDEOS_PER_SECOND = 3.0  # the rate the time scale aims the ideal fleet at: what 2 cores keep up with
WINDOW = 48  # completions a saturation rate is read over
GOALS = {"saturation": 0.95, "low_load": 1.02, "template": 0.45, "control_plane": 20}
LABEL = "SIMULATED GPUs: cost-model seconds (docs/scaling.md), the real control plane"
# 20 variants of one template, as an ad studio makes them (products x surfaces)
TEMPLATE_VARIANTS = [
    {"product": p, "surface": s}
    for p in ("a red sneaker", "a blue mug", "a green bottle", "a wooden chair", "a silver watch")
    for s in ("a marble table", "a wooden desk", "the sand", "a glass shelf")
]


@dataclass
class Shape:
    width: int
    height: int
    frames: int = 81
    steps: int = 40

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def sim_settings(base: Settings, work: Path, sim: SimSettings, shape: Shape) -> Settings:
    limits = Limits(max_height=max(shape.height, 256), max_width=max(shape.width, 256), max_frames=shape.frames)
    return base.model_copy(update={"device": "sim", "sim": sim, "limits": limits, "cache_dir": work / "cache"})


def schedule(settings: Settings, steps: int) -> tuple[int, int]:
    from stages.checkpoint import Checkpoint
    from stages.denoising import Scheduler

    checkpoint = Checkpoint.from_settings(settings)
    plan = Scheduler.from_checkpoint(checkpoint).plan(steps, checkpoint.boundary_ratio)
    return len(plan.high_noise_steps), len(plan.low_noise_steps)


def fixed(split: ExpertSplit) -> dict[str, tuple[int, int]]:
    """The experts' replicas as `t2v plan` splits the GPUs: fixed counts."""
    return {
        ExpertKind.HIGH_NOISE.deployment: (split.high_noise, split.high_noise),
        ExpertKind.LOW_NOISE.deployment: (split.low_noise, split.low_noise),
    }


class Nodes:
    """A local multi-node Ray cluster: a GPU-less head (the ingress, job store, text encoder and
    decoder) and worker nodes of `gpus_per_node` logical GPUs, Serve's proxy on the head. The
    benchmark's fleets are deployed on it one after another (`Fleet`): one start-up and teardown
    for the run, as on a real cluster that is redeployed. `serve=False`: no Serve (a batch engine
    that needs none, and whose pools then have the two cores to themselves)."""

    def __init__(self, gpus: int, work: Path, gpus_per_node: int = GPUS_PER_NODE, serve: bool = True):
        self.gpus, self.work, self.gpus_per_node, self.serve = gpus, work, gpus_per_node, serve
        self.nodes = -(-gpus // gpus_per_node)  # worker nodes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cluster = None

    def __enter__(self) -> Nodes:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        started = time.monotonic()
        ray_environment()
        # Ray notes the cluster's address under its temp dir: this run's own, not a shared /tmp/ray
        (self.work / "ray").mkdir(parents=True, exist_ok=True)
        os.environ["RAY_TMPDIR"] = str(self.work)
        # Serve's handles report queue lengths every 10 s by default, for autoscaled deployments
        # only: the ramp's videos take seconds here (the nodes' processes inherit it)
        os.environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
        node = {"object_store_memory": 200 * 1024**2, "dashboard_agent_listen_port": None}
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 4, "num_gpus": 0, "temp_dir": str(self.work / "ray"), **node},
        )
        for _ in range(self.nodes):
            self.cluster.add_node(num_cpus=2 * self.gpus_per_node, num_gpus=self.gpus_per_node, **node)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, logging_level="WARNING", log_to_driver=False)
        if self.serve:
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.port})
        up = time.monotonic() - started
        log(f"a head and {self.nodes} nodes of {self.gpus_per_node} logical GPUs up in {up:.0f} s")
        return self

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve

        if self.serve:
            with contextlib.suppress(Exception):
                serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()


class Fleet:
    """The app deployed on `nodes`, experts placed on their logical GPUs; deleted on exit."""

    def __init__(
        self,
        nodes: Nodes,
        settings: Settings,
        experts: dict[str, tuple[int, int]],
        output_uri: str | None = None,
        autoscaling: dict | None = None,
    ):
        """`experts`: (min, max) replicas of each expert deployment, one logical GPU each (under
        co-located placement, `HighNoiseExpert`'s are the `Experts` deployment's); `autoscaling`:
        their `DeploymentSettings` beyond that."""
        self.url = nodes.url
        deployments = {name: d.model_copy() for name, d in settings.deployments.items()}
        for name, (least, most) in experts.items():
            deployments[name] = deployments[name].model_copy(
                update={
                    "num_gpus": 1,
                    "num_cpus": 0.5,
                    "threads": 1,
                    "min_replicas": least,
                    "max_replicas": most,
                    "max_ongoing_requests": 2,  # the next request waits on the GPU, not in the router
                    **(autoscaling or {}),
                }
            )
        for name in ("TextEncoder", "Decoder", "Ingress"):
            # On the head: one of each keeps up (a VAE decode is 2 % of a video's GPU time)
            deployments[name] = deployments[name].model_copy(
                update={
                    "num_cpus": 0.5,
                    "threads": 1,
                    "min_replicas": 1,
                    "max_replicas": 1,
                    "max_ongoing_requests": 512,
                }
            )
        serving = settings.serving.model_copy(
            # every request the benchmark sends is admitted: 503s would measure the limit, not the fleet
            update={"port": nodes.port, "max_active_jobs": 1024, "ray_temp_dir": str(nodes.work / "ray")}
        )
        if output_uri is not None:  # job records and videos on an object store, as a real cluster keeps them
            serving = serving.model_copy(update={"output_uri": output_uri})
        self.settings = settings.model_copy(update={"deployments": deployments, "serving": serving})

    def __enter__(self) -> Fleet:
        import httpx
        from ray import serve

        from cluster.app import bind_app

        started = time.monotonic()
        serve.run(bind_app(self.settings), name=APP, route_prefix="/")
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while http.get("/healthz").status_code != 200:
                time.sleep(0.25)
        self.startup_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc) -> None:
        from ray import serve

        serve.delete(APP)  # returns once its replicas are gone and their GPUs free


async def _load(url: str, bodies: list[dict], concurrency: int, stagger: float = 0.0) -> list[dict]:
    """POST every body to /v1/videos/sync, `concurrency` at a time; each call's start, end and status.
    The first `concurrency` start `stagger` wall seconds apart: started all at once, GPUs that each
    run two requests finish them in waves, and a rate read between waves is noise."""
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    results = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600, connect=30), limits=limits) as http:

        async def one(i: int, body: dict) -> None:
            async with semaphore:
                if i < concurrency:
                    await asyncio.sleep(i * stagger)
                start = time.monotonic()
                response = await http.post("/v1/videos/sync", json=body)
                results.append({"start": start, "end": time.monotonic(), "status": response.status_code})

        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return results


def load(url: str, bodies: list[dict], concurrency: int, stagger: float = 0.0) -> list[dict]:
    return asyncio.run(_load(url, bodies, concurrency, stagger))


def bodies(shape: Shape, n: int, first_seed: int) -> list[dict]:
    return [
        {
            "prompt": f"a ball number {first_seed + i} rolling on the grass",
            "size": shape.size,
            "num_frames": shape.frames,
            "steps": shape.steps,
            "seed": first_seed + i,
        }
        for i in range(n)
    ]


def bench_fleet(
    nodes: Nodes,
    base: Settings,
    gpus: int,
    shape: Shape,
    gpu: str,
    output_uri: str | None = None,
    placement: str = "disaggregated",
    alone: int = 3,
    rate: float = WALL_VIDEOS_PER_SECOND,
    window: int = WINDOW,
) -> dict:
    """Saturation throughput and low-load latency of one fleet, in simulated seconds; job records
    and videos under `output_uri` when given (counted there afterwards). `placement`:
    disaggregated (experts split as `t2v plan` says) or co_located (every GPU runs both).
    `alone`: low-load requests, the first of which warms the routes; `rate`: wall videos a second
    of the ideal fleet (sets the time scale); `window`: completions the saturation rate is read
    over, between the first wave and the drain."""
    cost = CostModel(gpu)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, shape.height, shape.width, shape.frames)
    ideal = gpus / (shape.steps * step)  # videos per simulated second: GPUs / expert GPU-seconds per video
    time_scale = round(ideal / rate, 6)  # the ideal fleet makes `rate` videos a wall second
    work = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
    settings = settings.model_copy(update={"experts_placement": placement})
    high_steps, low_steps = schedule(settings, shape.steps)
    co_located = placement == "co_located"
    split = expert_split(gpus, high_steps, low_steps)
    experts = {ExpertKind.HIGH_NOISE.deployment: (gpus, gpus)} if co_located else fixed(split)
    concurrency = 2 * gpus
    n = 2 * concurrency + window
    layout = "both experts on each" if co_located else f"{split.high_noise} high-noise, {split.low_noise} low-noise"
    log(f"{gpus} {gpu} GPUs ({layout}), time scale {time_scale:g}")
    output = child_uri(output_uri, f"fleet-{gpus}-{gpu}-{placement}") if output_uri else None
    try:
        with Fleet(nodes, settings, experts, output) as fleet:
            log(f"  up in {fleet.startup_seconds:.0f} s; low load: {alone} videos one at a time")
            alone = load(fleet.url, bodies(shape, alone, 10_000), 1)
            log(f"  saturation: {n} videos, {concurrency} in flight")
            # the first wave spread over one ideal inter-completion time each: the steady state at once
            busy = load(fleet.url, bodies(shape, n, 20_000), concurrency, stagger=time_scale / ideal)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # after the first wave, before the drain: the slope of completion times over the window (two
    # requests sharing a GPU finish together, so a rate from the window's ends alone jumps by pairs)
    window_ends = sorted(r["end"] for r in busy)[concurrency : n - concurrency]
    seconds_each = statistics.linear_regression(range(len(window_ends)), window_ends).slope
    rate = time_scale / seconds_each  # videos per simulated second
    # A request's GPU time is simulated (scaled); the rest - HTTP, the ingress, hand-offs, the job
    # store, the mp4, the scorer - is this machine's real wall time, counted as it is, unscaled.
    # each expert on its own GPU: no swaps; both on one GPU: swaps where it cannot hold the two
    swaps = co_located and cost.needs_swap()
    compute = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps, offload=swaps)
    overheads = [(r["end"] - r["start"]) - compute * time_scale for r in alone[1:]]  # the first warms the routes
    overhead = statistics.median(overheads)
    # what the split allows (co-located: no split; the swaps are the cost)
    per_video = shape.steps * step + (SWAPS_PER_VIDEO * cost.swap_seconds() if swaps else 0.0)
    bound = gpus / per_video if co_located else min(split.high_noise / high_steps, split.low_noise / low_steps) / step
    stored = None
    if output is not None:
        store = OutputStore(output)
        stored = {
            "output_uri": output,
            "records": len(store.keys("jobs")),
            "videos": sum(k.endswith(".mp4") for k in store.keys("videos")),
        }
    return {
        "gpus": gpus,
        "nodes": -(-gpus // nodes.gpus_per_node),
        "gpu": gpu,
        "placement": placement,
        "split": None if co_located else [split.high_noise, split.low_noise],
        "steps": [high_steps, low_steps],
        "time_scale": time_scale,
        "videos": n,
        "concurrency": concurrency,
        "failed": sum(r["status"] != 200 for r in alone + busy),
        "videos_per_hour": rate * 3600,
        "videos_per_hour_per_gpu": rate * 3600 / gpus,
        "ideal_per_hour": ideal * 3600,
        "split_bound_per_hour": bound * 3600,
        "saturation_ratio": rate / ideal,
        "low_load_p50_s": compute + overhead,
        "control_plane_ms": overhead * 1000,
        "pure_compute_s": compute,
        "low_load_ratio": (compute + overhead) / compute,
        "stored": stored,
    }


def bench_template(base: Settings, shape: Shape, gpu: str) -> dict:
    """GPU-seconds per video of template variants, cached against uncached (in this process)."""
    from cluster.pipeline import Pipeline

    work = Path(tempfile.mkdtemp(prefix="fleet-template", dir="/tmp"))
    try:
        settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=1e-6), shape)
        pipeline = Pipeline.from_settings(settings)
        spent = {}
        for cache in (False, True):
            before = sum(pipeline.simulated_seconds().values())
            for slots in TEMPLATE_VARIANTS:
                request = pipeline.validator.request(
                    template="product_showcase",
                    slots=slots,
                    width=shape.width,
                    height=shape.height,
                    num_frames=shape.frames,
                    num_inference_steps=shape.steps,
                    cache=cache,
                )
                pipeline(request)
            spent[cache] = (sum(pipeline.simulated_seconds().values()) - before) / len(TEMPLATE_VARIANTS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"uncached_gpu_s": spent[False], "cached_gpu_s": spent[True], "ratio": spent[True] / spent[False]}


def bench_batching(base: Settings, shape: Shape, concurrency: int, batching: bool, gpu: str) -> dict:
    """One replica per stage in this process, `concurrency` requests at a time, experts batching
    (up to 8 requests a forward) or not: throughput and p95 latency in simulated seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from cluster.pipeline import Pipeline
    from contract.settings import BatchingSettings
    from stages.checkpoint import Checkpoint

    cost = CostModel(gpu)
    video_gpu_s = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps)
    time_scale = 0.5 / video_gpu_s  # a lone video: half a wall second, well above this process's CPU work per video
    work = Path(tempfile.mkdtemp(prefix="fleet-batching", dir="/tmp"))
    try:
        settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape).model_copy(
            update={"batching": BatchingSettings(enabled=batching, max_batch_size=8, max_wait_ms=0)}
        )
        pipeline = Pipeline(Checkpoint.from_settings(settings), cache=None, batching=batching)

        def one(i: int) -> tuple[float, float]:
            request = pipeline.validator.request(
                prompt=f"a ball number {i}",
                width=shape.width,
                height=shape.height,
                num_frames=shape.frames,
                num_inference_steps=shape.steps,
                seed=i,
            )
            start = time.monotonic()
            pipeline(request)
            return start, time.monotonic()

        n = 2 * concurrency
        with ThreadPoolExecutor(concurrency) as pool:
            spans = list(pool.map(one, range(n)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    latencies = sorted((e - s) / time_scale for s, e in spans)
    return {
        "size": shape.size,
        "concurrency": concurrency,
        "batching": batching,
        "videos_per_hour": n / (wall / time_scale) * 3600,
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
    }


# The load ramp: (concurrent clients, wall seconds). Each client sends a request, waits for its
# video, then thinks for an exponential time (Poisson arrivals per client) before the next.
RAMP = ((1, 10), (16, 75), (1, 40))
PEAK_REQUESTS_PER_SECOND = 1.6  # what this machine's control plane serves beside 16 GPUs' replicas
THINK = 0.1  # a client's mean think time, in videos' compute times
AUTOSCALE = {
    "target_ongoing_requests": 1,  # a GPU computes one video at a time
    # Serve's defaults (30 s up, 600 s down, a 30 s window) are wall seconds on a real cluster too,
    # where a video takes 17 minutes; against videos that take seconds here they are shortened
    # (the window stays above the deprecated 10 s `metrics_interval_s`, as Serve asks).
    "upscale_delay_s": 2,
    "downscale_delay_s": 15,
    "look_back_period_s": 11,
}


async def _ramp_load(url: str, shape: Shape, phases, video_wall_s: float, seed: int) -> tuple[list[dict], float]:
    """Closed-loop clients: client i sends while the current phase has more than i of them.
    Returns every request's start, end and status (seconds from the start) and the start."""
    import random

    import httpx

    rng = random.Random(seed)
    results: list[dict] = []
    edges = [sum(seconds for _, seconds in phases[: k + 1]) for k in range(len(phases))]
    t0 = time.monotonic()

    def clients_now() -> int | None:
        elapsed = time.monotonic() - t0
        return next((c for (c, _), edge in zip(phases, edges, strict=True) if elapsed < edge), None)

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600, connect=30), limits=limits) as http:

        async def client(i: int) -> None:
            while (now := clients_now()) is not None:
                if i >= now:  # not needed in this phase
                    await asyncio.sleep(0.2)
                    continue
                await asyncio.sleep(rng.expovariate(1 / (THINK * video_wall_s)))
                body = bodies(shape, 1, 50_000 + len(results) + 1000 * i)[0]
                start = time.monotonic() - t0
                try:
                    status = (await http.post("/v1/videos/sync", json=body)).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                results.append({"start": start, "end": time.monotonic() - t0, "status": status})

        await asyncio.gather(*(client(i) for i in range(max(c for c, _ in phases))))
    return results, t0


def bench_autoscale(
    nodes: Nodes, base: Settings, gpus: int, shape: Shape, gpu: str, plot: Path | None, phases=RAMP
) -> dict:
    """The load ramp on an autoscaled fleet: experts from one replica each up to the `t2v plan`
    split of `gpus`; replicas (running, and running + starting) and requests in flight sampled
    every half second (a PNG at `plot`); the wall seconds from the load step to Serve's decision, to
    the added replicas serving, and back down; every request's outcome."""
    import threading

    from ray import serve

    cost = CostModel(gpu)
    compute = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps, offload=False)
    peak = max(c for c, _ in phases)
    video_wall_s = peak / PEAK_REQUESTS_PER_SECOND
    time_scale = round(video_wall_s / compute, 6)
    work = Path(tempfile.mkdtemp(prefix="fleet-ramp", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
    high_steps, low_steps = schedule(settings, shape.steps)
    split = expert_split(gpus, high_steps, low_steps)
    names = [ExpertKind.HIGH_NOISE.deployment, ExpertKind.LOW_NOISE.deployment]
    experts = {names[0]: (1, split.high_noise), names[1]: (1, split.low_noise)}
    log(f"autoscaling ramp on {gpus} GPUs: experts 1 -> {split.high_noise} and 1 -> {split.low_noise}")
    samples: list[dict] = []
    try:
        with Fleet(nodes, settings, experts, autoscaling=AUTOSCALE) as fleet:
            stop = threading.Event()
            started = time.monotonic()

            def sample() -> None:
                while not stop.wait(0.5):
                    with contextlib.suppress(Exception):  # a status call may time out under load
                        deployments = serve.status().applications[APP].deployments
                        point = {"t": time.monotonic() - started}
                        for n in names:
                            states = deployments[n].replica_states
                            point[n] = states.get("RUNNING", 0)
                            point[n + "+starting"] = point[n] + states.get("STARTING", 0)
                        samples.append(point)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            results, t0 = asyncio.run(_ramp_load(fleet.url, shape, phases, video_wall_s, seed=7))
            # after the load: wait for the scale back (or give up after a minute)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (samples and all(samples[-1][n] == 1 for n in names)):
                time.sleep(1)
            stop.set()
            sampler.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for point in samples:  # on the load's clock; requests in flight (queued or running) at each
        point["t"] -= t0 - started
        point["in_flight"] = sum(r["start"] <= point["t"] < r["end"] for r in results)
    up_at = phases[0][1]
    down_at = up_at + phases[1][1]

    def at(t: float) -> dict:
        return next((p for p in reversed(samples) if p["t"] <= t), samples[0])

    def first(after: float, condition) -> float | None:
        return next((p["t"] - after for p in samples if p["t"] >= after and condition(p)), None)

    before = at(up_at)
    starts = [sum(s for _, s in phases[:k]) for k in range(len(phases))]
    result = {
        "gpus": gpus,
        "gpu": gpu,
        "time_scale": time_scale,
        "phases": [list(p) for p in phases],
        "max_replicas": [split.high_noise, split.low_noise],
        "replicas_at_step": [before[n] for n in names],
        "requests": len(results),
        "failed": sum(r["status"] != 200 for r in results),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        # Serve decided (a replica starting), the first added replica served, every one did
        "decided_s": first(up_at, lambda p: any(p[n + "+starting"] > before[n] for n in names)),
        "added_capacity_s": first(up_at, lambda p: any(p[n] > before[n] for n in names)),
        # each pool at its most (the high-noise one may already be shrinking when the low-noise one gets there)
        "full_capacity_s": max(
            (
                first(up_at, lambda p, n=n, most=most: p[n] == most)
                for n, most in zip(names, [split.high_noise, split.low_noise], strict=True)
            ),
            key=lambda seconds: float("inf") if seconds is None else seconds,
        ),
        "peak_replicas": [max((p[n] for p in samples), default=0) for n in names],
        "scaled_back_s": first(down_at, lambda p: p[names[0]] == 1 and p[names[1]] == 1),
        "p50_s_by_phase": [
            statistics.median([(r["end"] - r["start"]) / time_scale for r in results if a <= r["start"] < a + d] or [0])
            for a, (_, d) in zip(starts, phases, strict=True)
        ],
        "load_seconds": cost.load_seconds("expert"),
        "pure_compute_s": compute,
        "plot": str(plot) if plot else None,
    }
    if plot is not None:
        plot_ramp(samples, names, phases, result, plot)
    return result


def plot_ramp(samples: list[dict], names: list[str], phases, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (replicas, load) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    t = [p["t"] for p in samples]
    for name, color in zip(names, ("tab:blue", "tab:orange"), strict=True):
        replicas.step(t, [p[name] for p in samples], color=color, where="post", label=f"{name} running")
        replicas.step(t, [p[name + "+starting"] for p in samples], ":", color=color, where="post", label="+ starting")
    replicas.set_ylabel("replicas")
    replicas.legend(loc="upper right", fontsize=8)
    load.step(t, [p["in_flight"] for p in samples], where="post", color="tab:red", label="requests in flight")
    load.set_ylabel("in flight (queued + running)")
    load.set_xlabel(f"wall seconds (simulated GPUs: 1 s here = {1 / result['time_scale']:.0f} simulated s)")
    load.legend(loc="upper right", fontsize=8)
    edge = 0.0
    for clients, seconds in phases:
        for axis in (replicas, load):
            axis.axvline(edge, color="grey", linewidth=0.5)
        load.text(edge + 1, 0.2, f"{clients} client{'s' if clients > 1 else ''}", fontsize=8, color="grey")
        edge += seconds
    fig.suptitle(
        f"SIMULATED {result['gpus']} x {result['gpu'].upper()}: autoscaling ramp, "
        f"{result['requests']} requests, {result['failed']} failed"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_control_plane(nodes: Nodes, base: Settings, jobs: int, concurrency: int) -> dict:
    """The most jobs a second the serving path sustains here with compute at zero (a simulated
    second of 1 ns), and its CPU seconds per job by process: HTTP proxy, ingress, job store,
    hand-offs, and the stages' own CPU work (the stand-in video's mp4 and physics score)."""
    from bench.cpu import CpuMeter, ceiling, control_plane

    shape = Shape(64, 64, frames=17, steps=10)
    work = Path(tempfile.mkdtemp(prefix="fleet-cp", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(time_scale=1e-9), shape)
    high_steps, low_steps = schedule(settings, shape.steps)
    try:
        with Fleet(nodes, settings, fixed(expert_split(2, high_steps, low_steps))) as fleet:
            load(fleet.url, bodies(shape, min(jobs, concurrency), 30_000), concurrency)  # warm every route
            meter = CpuMeter().start()
            start = time.monotonic()
            results = load(fleet.url, bodies(shape, jobs, 40_000), concurrency)
            wall = time.monotonic() - start
            cpu = meter.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_job = {role: seconds / jobs for role, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]) if seconds > 0}
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "failed": sum(r["status"] != 200 for r in results),
        "statuses": dict(Counter(r["status"] for r in results)),
        "jobs_per_second": jobs / wall,
        "cpu_seconds_per_job": per_job,
        "control_plane_cpu_per_job": control_plane(per_job),
        "ceiling_jobs_per_second": ceiling(os.cpu_count() or 1, sum(per_job.values())) / 60,
        # derived: a head node whose cores do only the control plane (the stages' CPU on GPU nodes)
        "control_plane_only_jobs_per_second": ceiling(os.cpu_count() or 1, control_plane(per_job)) / 60,
    }


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def on_nodes(args: argparse.Namespace, base: Settings, shape: Shape) -> tuple:
    """The sections that deploy the app, one after another on one set of nodes: capacity, the
    fleets, the ramp, the placements (a fleet above stands for its placement run)."""
    capacity, fleets, placements, ramp = None, [], [], None
    gpus = max([*args.gpus, args.placement_gpus, args.ramp_gpus, 2 if args.control_plane_jobs else 0])
    if not gpus:
        return capacity, fleets, placements, ramp
    measure = {"rate": args.rate, "window": args.window}
    work = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))
    try:
        with Nodes(gpus, work, args.gpus_per_node) as nodes:
            if args.control_plane_jobs:
                capacity = bench_control_plane(nodes, base, args.control_plane_jobs, 64)
            fleets = [bench_fleet(nodes, base, n, shape, args.gpu, args.output_uri, **measure) for n in args.gpus]
            if args.ramp_gpus:
                phases = tuple(zip((1, args.ramp_peak, 1), args.ramp_seconds, strict=True))
                ramp = bench_autoscale(nodes, base, args.ramp_gpus, shape, args.gpu, args.plot, phases)
            for gpu in args.placement_types if args.placement_gpus else []:
                for placement in ("disaggregated", "co_located"):
                    key = (args.placement_gpus, gpu, placement)
                    done = next((f for f in fleets if (f["gpus"], f["gpu"], f["placement"]) == key), None)
                    placements.append(
                        done
                        or bench_fleet(
                            nodes, base, args.placement_gpus, shape, gpu, args.output_uri, placement, alone=2, **measure
                        )
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return capacity, fleets, placements, ramp


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="*", default=[8, 32], help="fleet sizes (default 8 32; none: skip)")
    parser.add_argument("--size", default="1280x720", help="WxH of every video (default 1280x720, 81 frames)")
    parser.add_argument(
        "--rate",
        type=float,
        default=WALL_VIDEOS_PER_SECOND,
        help="wall videos a second of the ideal fleet: sets each fleet's time scale (default %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help="completions a saturation rate is read over, after the first wave (default %(default)s)",
    )
    parser.add_argument(
        "--control-plane-jobs", type=int, default=150, help="jobs for control-plane capacity (default 150; 0: skip)"
    )
    parser.add_argument(
        "--batching-concurrency", type=int, nargs="*", default=[8, 32], help="batching runs (default 8 32; none: skip)"
    )
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="the simulated GPU (default h100)")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=GPUS_PER_NODE,
        help=f"logical GPUs per worker node (default {GPUS_PER_NODE})",
    )
    parser.add_argument(
        "--placement-gpus",
        type=int,
        default=8,
        help="disaggregated vs co-located on H100 and L40S (default 8; 0: skip)",
    )
    parser.add_argument("--ramp-gpus", type=int, default=16, help="the autoscaling ramp's fleet (default 16; 0: skip)")
    parser.add_argument(
        "--ramp-seconds",
        type=float,
        nargs=3,
        default=[s for _, s in RAMP],
        help="wall seconds with 1 client, the peak and 1 again (default %(default)s)",
    )
    parser.add_argument("--ramp-peak", type=int, default=16, help="clients at the ramp's peak (default 16)")
    parser.add_argument("--plot", type=Path, default=Path("docs/images/fleet-autoscaling.png"), help="the ramp's PNG")
    parser.add_argument(
        "--placement-types", nargs="+", default=["h100", "l40s"], choices=sorted(GPUS), help="GPUs to compare on"
    )
    parser.add_argument(
        "--output-uri", help="the fleets' job records and videos on this pyarrow.fs URI (default: a local temp dir)"
    )
    args = parser.parse_args(argv)
    if args.window < 4:
        parser.error("--window must be at least 4 completions")
    width, height = (int(v) for v in args.size.split("x"))
    shape = Shape(width, height)
    base = model_settings()

    # In-process sections first, before the nodes' processes share the cores: two processes, each
    # batching run's off and on side by side (each process is mostly waiting on simulated GPUs).
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        template_run = pool.submit(bench_template, base, shape, args.gpu)
        batching_runs = [
            pool.submit(bench_batching, base, s, c, b, args.gpu)
            for s in (Shape(832, 480), shape)
            for c in args.batching_concurrency
            for b in (False, True)
        ]
        template, batching = template_run.result(), [run.result() for run in batching_runs]
    capacity, fleets, placements, ramp = on_nodes(args, base, shape)

    if fleets:
        print(f"\n== Fleet, {shape.size} x {shape.frames} frames, {shape.steps} steps, {args.gpu} ({LABEL})")
        print(
            f"{'GPUs':>5} {'split':>7} {'scale':>9} {'videos':>7} {'failed':>6} {'videos/h':>9} {'ideal/h':>8} "
            f"{'split/h':>8} {'ratio':>6} {'p50 alone s':>11} {'compute s':>9} {'overhead ms':>11} {'ratio':>6}"
        )
        for f in fleets:
            print(
                f"{f['gpus']:>5} {f['split'][0]:>3}:{f['split'][1]:<3} {f['time_scale']:>9g} {f['videos']:>7} "
                f"{f['failed']:>6} {f['videos_per_hour']:>9.1f} {f['ideal_per_hour']:>8.1f} "
                f"{f['split_bound_per_hour']:>8.1f} {f['saturation_ratio']:>6.3f} {f['low_load_p50_s']:>11.1f} "
                f"{f['pure_compute_s']:>9.1f} {f['control_plane_ms']:>11.0f} {f['low_load_ratio']:>6.3f}"
            )
        print(
            "(ideal: GPUs / expert GPU-seconds per video; split: what the t2v plan split allows; overhead: this\n"
            " machine's wall time outside the simulated GPUs, HTTP to mp4, counted unscaled)"
        )
    if placements:
        print(f"\n== Disaggregated vs co-located experts, {args.placement_gpus} GPUs, {shape.size} ({LABEL})")
        print(
            f"{'GPU':>5} {'placement':>13} {'layout':>11} {'videos/h':>9} {'per GPU/h':>9} {'bound/h':>8} {'p50 alone s':>11}"
        )
        for f in placements:
            layout = "both/GPU" if f["split"] is None else f"{f['split'][0]}:{f['split'][1]}"
            print(
                f"{f['gpu']:>5} {f['placement']:>13} {layout:>11} {f['videos_per_hour']:>9.1f} "
                f"{f['videos_per_hour_per_gpu']:>9.2f} {f['split_bound_per_hour']:>8.1f} {f['low_load_p50_s']:>11.1f}"
            )
        print("(bound: what the layout allows - the split, or each GPU's swaps; p50 alone: one request at a time)")
    if ramp:
        print(f"\n== Autoscaling ramp, {ramp['gpus']} GPUs, {shape.size} ({LABEL})")
        print(
            f"clients {' -> '.join(str(c) for c, _ in ramp['phases'])} (Poisson arrivals; "
            f"{' / '.join(f'{s:g}' for _, s in ramp['phases'])} wall s); experts from 1 up to "
            f"{ramp['max_replicas'][0]} and {ramp['max_replicas'][1]} replicas"
        )
        print(
            f"{ramp['requests']} requests, {ramp['failed']} failed. After the step up (from "
            f"{ramp['replicas_at_step'][0]} + {ramp['replicas_at_step'][1]}): Serve decided "
            f"{_s(ramp['decided_s'])}, the first added replica served {_s(ramp['added_capacity_s'])}, all "
            f"{_s(ramp['full_capacity_s'])} (peak {ramp['peak_replicas'][0]} + {ramp['peak_replicas'][1]}); "
            f"back to 1 + 1 {_s(ramp['scaled_back_s'])} after the step down (wall s: Serve's reaction and this "
            f"machine's replica start; a real replica also copies its weights, {ramp['load_seconds']:.1f} s)"
        )
        print(
            "p50 per phase: "
            + ", ".join(f"{p:.0f}" for p in ramp["p50_s_by_phase"])
            + f" simulated s (pure compute {ramp['pure_compute_s']:.0f}); plot: {ramp['plot']}"
        )
    print(
        f"\ntemplate cache, {len(TEMPLATE_VARIANTS)} variants of one template: {template['cached_gpu_s']:.1f} "
        f"against {template['uncached_gpu_s']:.1f} GPU-seconds per video uncached ({template['ratio']:.3f})"
    )
    if batching:
        print(f"\n== Batching in an expert replica, one replica per stage ({LABEL})")
        print(f"{'size':>9} {'in flight':>9} {'batching':>8} {'videos/h':>9} {'p95 s':>8}")
        for b in batching:
            print(
                f"{b['size']:>9} {b['concurrency']:>9} {'on' if b['batching'] else 'off':>8} "
                f"{b['videos_per_hour']:>9.2f} {b['p95_s']:>8.0f}"
            )
    if capacity:
        print(f"\n== Control-plane capacity, compute at zero (64x64 x 17 stand-ins, {LABEL})")
        print(
            f"{capacity['jobs']} jobs, {capacity['concurrency']} in flight, {capacity['failed']} failed: "
            f"{capacity['jobs_per_second']:.1f} jobs/s (goal {GOALS['control_plane']}); "
            f"the CPU work per job caps it at {capacity['ceiling_jobs_per_second']:.1f} jobs/s on "
            f"{os.cpu_count()} cores"
        )
        for role, seconds in capacity["cpu_seconds_per_job"].items():
            print(f"  {role:<55} {seconds * 1000:7.1f} ms CPU per job")
        print(
            f"the control plane proper (proxy, Ray, ingress, job store): "
            f"{capacity['control_plane_cpu_per_job'] * 1000:.0f} ms a job, "
            f"{capacity['control_plane_only_jobs_per_second']:.1f} jobs/s on {os.cpu_count()} cores of its own (derived)"
        )
    result = {
        "benchmark": "fleet",
        "simulated": True,
        "gpu": args.gpu,
        "size": shape.size,
        "frames": shape.frames,
        "steps": shape.steps,
        "fleets": fleets,
        "placements": placements,
        "autoscaling": ramp,
        "template": template,
        "batching": batching,
        "control_plane": capacity,
        "goals": GOALS,
        "met": {
            "saturation": all(f["saturation_ratio"] >= GOALS["saturation"] for f in fleets) if fleets else None,
            "low_load": all(f["low_load_ratio"] <= GOALS["low_load"] for f in fleets) if fleets else None,
            "template": template["ratio"] <= GOALS["template"],
            "no_failures": all(f["failed"] == 0 for f in fleets + placements)
            and not (capacity or {}).get("failed")
            and not (ramp or {}).get("failed"),
            "scales_back": None if ramp is None else ramp["scaled_back_s"] is not None,
            "control_plane": None if capacity is None else capacity["jobs_per_second"] >= GOALS["control_plane"],
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
