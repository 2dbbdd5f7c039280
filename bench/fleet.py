"""A simulated GPU fleet on this machine: the real cluster at 8 and 32 GPUs. SIMULATED GPUs.

    python -m bench.fleet [--gpus 8 32] [--size 1280x720] [--videos-per-gpu 10]

Each fleet is a local multi-node Ray cluster (`ray.cluster_utils.Cluster`: a GPU-less head for
the ingress, job store, text encoder and decoder, and workers with 8 logical GPUs each) running
the real Serve app with `device: sim`: every stage's real code path - HTTP, ingress, job store,
handles, hand-offs, caches, metrics, placement on `num_gpus` - with the model compute replaced by
the cost model's seconds (deployments/simulated.py, docs/scaling.md). Experts hold one logical
GPU per replica, split between the two as `t2v plan --gpus N` says. Every figure is in simulated
seconds (wall seconds / `sim.time_scale`; the scale is chosen per fleet so that this 2-core
machine's control plane keeps up) and is labelled SIMULATED.

Measured, side by side in one run:
- saturation throughput over ideal: `2 x GPUs` requests in flight over HTTP (`POST
  /v1/videos/sync`), the completion rate between the first and the last wave, against
  ideal = GPUs / (expert GPU-seconds per video). Goal >= 0.95;
- latency at low load over pure compute: one request at a time, p50 against the cost model's
  seconds for the video (encode + every step + decode); the time outside the simulated GPUs
  (HTTP, ingress, hand-offs, job store, mp4, scorer) is this machine's wall time, unscaled, as it
  would be on a real cluster. Goal <= 1.02;
- the template cache in GPU-seconds per video: variants of one template against the same
  requests uncached, in this process on the same simulated stages. Goal <= 0.45;
- batching in an expert replica under the cost model, on and off, at 480p and 720p with 8 and 32
  requests in flight (one replica per stage, in this process): throughput and p95 latency;
- control-plane capacity: compute at zero, the most jobs a second this 2-core machine serves
  and its CPU seconds per job by process. Goal >= 20 jobs/s.
Not yet measured here (docs/scaling.md lists them): disaggregated against co-located experts,
the autoscaling ramp.

Prints tables, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.serve import log, model_settings
from cluster.launch import free_port, ray_environment
from cluster.sizing import ExpertSplit, expert_split
from contract.experts import ExpertKind
from contract.settings import Limits, Settings, SimSettings
from deployments.cost_model import GPUS, CostModel

GPUS_PER_NODE = 8
WALL_VIDEOS_PER_SECOND = 0.6  # the rate the time scale aims the ideal fleet at: what 2 cores keep up with
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
    from deployments.checkpoint import Checkpoint
    from deployments.denoising import Scheduler

    checkpoint = Checkpoint.from_settings(settings)
    plan = Scheduler.from_checkpoint(checkpoint).plan(steps, checkpoint.boundary_ratio)
    return len(plan.high_noise_steps), len(plan.low_noise_steps)


class Fleet:
    """A local multi-node Ray cluster with `gpus` logical GPUs on worker nodes, the app deployed on it."""

    def __init__(self, settings: Settings, gpus: int, split: ExpertSplit, work: Path):
        self.gpus, self.split, self.work = gpus, split, work
        deployments = {name: d.model_copy() for name, d in settings.deployments.items()}
        for kind, replicas in ((ExpertKind.HIGH_NOISE, split.high_noise), (ExpertKind.LOW_NOISE, split.low_noise)):
            deployments[kind.deployment] = deployments[kind.deployment].model_copy(
                update={
                    "num_gpus": 1,
                    "num_cpus": 0.5,
                    "threads": 1,
                    "min_replicas": replicas,
                    "max_replicas": replicas,
                    "max_ongoing_requests": 2,  # the next request waits on the GPU, not in the router
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
            update={"port": free_port(), "max_active_jobs": 1024, "ray_temp_dir": str(work / "ray")}
        )
        self.settings = settings.model_copy(update={"deployments": deployments, "serving": serving})
        self.url = f"http://127.0.0.1:{serving.port}"
        self.cluster = None

    def __enter__(self) -> Fleet:
        import httpx
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        from cluster.app import bind_app

        ray_environment()
        # Ray notes the cluster's address under its temp dir: this fleet's own, not a shared /tmp/ray
        (self.work / "ray").mkdir(parents=True, exist_ok=True)
        os.environ["RAY_TMPDIR"] = str(self.work)
        node = {"object_store_memory": 200 * 1024**2, "dashboard_agent_listen_port": None}
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 4, "num_gpus": 0, "temp_dir": str(self.work / "ray"), **node},
        )
        for _ in range(-(-self.gpus // GPUS_PER_NODE)):
            self.cluster.add_node(num_cpus=2 * GPUS_PER_NODE, num_gpus=GPUS_PER_NODE, **node)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, logging_level="WARNING", log_to_driver=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.settings.serving.port})
        started = time.monotonic()
        serve.run(bind_app(self.settings), name="t2v-fleet", route_prefix="/")
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while http.get("/healthz").status_code != 200:
                time.sleep(1)
        self.startup_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()


async def _load(url: str, bodies: list[dict], concurrency: int) -> list[dict]:
    """POST every body to /v1/videos/sync, `concurrency` at a time; each call's start, end and status."""
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    results = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600, connect=30), limits=limits) as http:

        async def one(body: dict) -> None:
            async with semaphore:
                start = time.monotonic()
                response = await http.post("/v1/videos/sync", json=body)
                results.append({"start": start, "end": time.monotonic(), "status": response.status_code})

        await asyncio.gather(*(one(b) for b in bodies))
    return results


def load(url: str, bodies: list[dict], concurrency: int) -> list[dict]:
    return asyncio.run(_load(url, bodies, concurrency))


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


def bench_fleet(base: Settings, gpus: int, shape: Shape, videos_per_gpu: int, gpu: str) -> dict:
    """Saturation throughput and low-load latency of one fleet, in simulated seconds."""
    cost = CostModel(gpu)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, shape.height, shape.width, shape.frames)
    ideal = gpus / (shape.steps * step)  # videos per simulated second: GPUs / expert GPU-seconds per video
    time_scale = round(ideal / WALL_VIDEOS_PER_SECOND, 6)  # the ideal fleet makes that many videos a wall second
    work = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
    high_steps, low_steps = schedule(settings, shape.steps)
    split = expert_split(gpus, high_steps, low_steps)
    concurrency = 2 * gpus
    n = videos_per_gpu * gpus
    log(f"{gpus} GPUs ({split.high_noise} high-noise, {split.low_noise} low-noise), time scale {time_scale:g}")
    try:
        with Fleet(settings, gpus, split, work) as fleet:
            log(f"  up in {fleet.startup_seconds:.0f} s; low load: 4 videos one at a time")
            alone = load(fleet.url, bodies(shape, 4, 10_000), 1)
            log(f"  saturation: {n} videos, {concurrency} in flight")
            busy = load(fleet.url, bodies(shape, n, 20_000), concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ends = sorted(r["end"] for r in busy)
    first, last = concurrency, n - concurrency  # after the first wave, before the drain
    rate = (last - first) / (ends[last] - ends[first]) * time_scale  # videos per simulated second
    # A request's GPU time is simulated (scaled); the rest - HTTP, the ingress, hand-offs, the job
    # store, the mp4, the scorer - is this machine's real wall time, counted as it is, unscaled.
    # each expert on its own GPU: no swaps
    compute = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps, offload=False)
    overheads = [(r["end"] - r["start"]) - compute * time_scale for r in alone[1:]]  # the first warms the routes
    overhead = statistics.median(overheads)
    bound = min(split.high_noise / high_steps, split.low_noise / low_steps) / step  # what the split allows
    return {
        "gpus": gpus,
        "split": [split.high_noise, split.low_noise],
        "steps": [high_steps, low_steps],
        "time_scale": time_scale,
        "videos": n,
        "concurrency": concurrency,
        "failed": sum(r["status"] != 200 for r in alone + busy),
        "videos_per_hour": rate * 3600,
        "ideal_per_hour": ideal * 3600,
        "split_bound_per_hour": bound * 3600,
        "saturation_ratio": rate / ideal,
        "low_load_p50_s": compute + overhead,
        "control_plane_ms": overhead * 1000,
        "pure_compute_s": compute,
        "low_load_ratio": (compute + overhead) / compute,
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
    from deployments.checkpoint import Checkpoint

    cost = CostModel(gpu)
    video_gpu_s = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps)
    time_scale = 1.0 / video_gpu_s  # a lone video: a wall second, well above this process's CPU work per video
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


def bench_control_plane(base: Settings, jobs: int, concurrency: int) -> dict:
    """The most jobs a second the serving path sustains here with compute at zero (a simulated
    second of 1 ns), and its CPU seconds per job by process: HTTP proxy, ingress, job store,
    hand-offs, and the stages' own CPU work (the stand-in video's mp4 and physics score)."""
    from bench.cpu import CpuMeter, ceiling, control_plane

    shape = Shape(64, 64, frames=17, steps=10)
    work = Path(tempfile.mkdtemp(prefix="fleet-cp", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(time_scale=1e-9), shape)
    high_steps, low_steps = schedule(settings, shape.steps)
    try:
        with Fleet(settings, 2, expert_split(2, high_steps, low_steps), work) as fleet:
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
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="*", default=[8, 32], help="fleet sizes (default 8 32; none: skip)")
    parser.add_argument("--size", default="1280x720", help="WxH of every video (default 1280x720, 81 frames)")
    parser.add_argument("--videos-per-gpu", type=int, default=10, help="videos per GPU at saturation (default 10)")
    parser.add_argument(
        "--control-plane-jobs", type=int, default=400, help="jobs for control-plane capacity (default 400; 0: skip)"
    )
    parser.add_argument(
        "--batching-concurrency", type=int, nargs="*", default=[8, 32], help="batching runs (default 8 32; none: skip)"
    )
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="the simulated GPU (default h100)")
    args = parser.parse_args(argv)
    if args.videos_per_gpu < 5:
        parser.error("--videos-per-gpu must be at least 5: the rate is read between the first wave and the drain")
    width, height = (int(v) for v in args.size.split("x"))
    shape = Shape(width, height)
    base = model_settings()

    template = bench_template(base, shape, args.gpu)
    capacity = bench_control_plane(base, args.control_plane_jobs, 64) if args.control_plane_jobs else None
    batching = [
        bench_batching(base, s, c, b, args.gpu)
        for s in (Shape(832, 480), shape)
        for c in args.batching_concurrency
        for b in (False, True)
    ]
    fleets = [bench_fleet(base, gpus, shape, args.videos_per_gpu, args.gpu) for gpus in args.gpus]

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
    result = {
        "benchmark": "fleet",
        "simulated": True,
        "gpu": args.gpu,
        "size": shape.size,
        "frames": shape.frames,
        "steps": shape.steps,
        "fleets": fleets,
        "template": template,
        "batching": batching,
        "control_plane": capacity,
        "goals": GOALS,
        "met": {
            "saturation": all(f["saturation_ratio"] >= GOALS["saturation"] for f in fleets) if fleets else None,
            "low_load": all(f["low_load_ratio"] <= GOALS["low_load"] for f in fleets) if fleets else None,
            "template": template["ratio"] <= GOALS["template"],
            "no_failures": all(f["failed"] == 0 for f in fleets) and not (capacity or {}).get("failed"),
            "control_plane": None if capacity is None else capacity["jobs_per_second"] >= GOALS["control_plane"],
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
