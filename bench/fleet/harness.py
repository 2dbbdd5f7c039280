"""What every fleet measurement stands on: a local multi-node Ray cluster of logical GPUs (`Nodes`),
the real app deployed on it with `device: sim` (`Fleet`), the requests sent to it over HTTP, and the
flags and JSON line every measurement shares. SIMULATED GPUs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.toolkit import log
from cluster.launch import free_port, ray_environment
from cluster.sizing import ExpertSplit
from contract.experts import ExpertKind
from contract.settings import Limits, Settings, SimSettings
from sim.cost_model import GPUS

APP = "t2v-fleet"
GPUS_PER_NODE = 8
LABEL = "SIMULATED GPUs: cost-model seconds (docs/scaling.md), the real control plane"


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


def schedule(settings: Settings, steps: int, flow_shift: float | None = None) -> tuple[int, int]:
    from stages.checkpoint import Checkpoint
    from stages.denoising import Scheduler

    checkpoint = Checkpoint.from_settings(settings)
    plan = Scheduler.from_checkpoint(checkpoint).plan(steps, checkpoint.boundary_ratio, flow_shift)
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


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    """Logs the wall seconds `what` took: where a run's time goes."""
    start = time.monotonic()
    yield
    log(f"{what} in {time.monotonic() - start:.0f} s")


@contextlib.contextmanager
def nodes_for(gpus: int, gpus_per_node: int = GPUS_PER_NODE) -> Iterator[Nodes]:
    """`Nodes` of `gpus` logical GPUs in a work folder of their own, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))
    try:
        with Nodes(gpus, work, gpus_per_node) as nodes:
            yield nodes
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
            # On the head: one of each keeps up (a VAE decode is 2 % of a 40-step video's GPU time).
            # A decoder of ranks reserves a small bundle a rank: simulated, its ranks are not started.
            deployments[name] = deployments[name].model_copy(
                update={
                    "num_cpus": 0.5 if deployments[name].parallel.degree == 1 else 0.05,
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

        with timed("  deleted"):
            serve.delete(APP)  # returns once its replicas are gone and their GPUs free


async def load_async(
    url: str, bodies: list[dict], concurrency: int, stagger: float = 0.0, arrivals: list[float] | None = None
) -> list[dict]:
    """POST every body to /v1/videos/sync, `concurrency` at a time; each call's start, end and status.
    The first `concurrency` start `stagger` wall seconds apart: started all at once, GPUs that each
    run two requests finish them in waves, and a rate read between waves is noise. `arrivals`:
    instead, each request sent at its own wall second from now (an open load, e.g. Poisson)."""
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    results = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600, connect=30), limits=limits) as http:
        began = time.monotonic()

        async def one(i: int, body: dict) -> None:
            if arrivals is not None:
                await asyncio.sleep(max(0.0, began + arrivals[i] - time.monotonic()))
            async with semaphore:
                if i < concurrency and arrivals is None:
                    await asyncio.sleep(i * stagger)
                start = time.monotonic()
                response = await http.post("/v1/videos/sync", json=body)
                end = time.monotonic()
                results.append(
                    {
                        "start": start,
                        "end": end,
                        "status": response.status_code,
                        "id": response.headers.get("X-Video-Id"),
                    }
                )

        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return results


def load(
    url: str, bodies: list[dict], concurrency: int, stagger: float = 0.0, arrivals: list[float] | None = None
) -> list[dict]:
    return asyncio.run(load_async(url, bodies, concurrency, stagger, arrivals))


def poisson_arrivals(n: int, rate: float, seed: int, start: float = 0.0) -> list[float]:
    """`n` arrival times (wall seconds from `start`) of a Poisson stream of `rate` a second."""
    gaps, t, arrivals = random.Random(seed), start, []
    for _ in range(n):
        arrivals.append(t)
        t += gaps.expovariate(rate)
    return arrivals


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


# -- the flags and the JSON line every measurement shares ------------------------------------


def add_common_arguments(
    parser: argparse.ArgumentParser, size: bool = True, gpu: bool = True, nodes: bool = True, output: bool = True
) -> None:
    """The flags the measurements share, those a measurement uses."""
    if size:
        parser.add_argument("--size", default="1280x720", help="WxH of every video (default 1280x720, 81 frames)")
    if gpu:
        parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="the simulated GPU (default h100)")
    if nodes:
        parser.add_argument(
            "--gpus-per-node",
            type=int,
            default=GPUS_PER_NODE,
            help=f"logical GPUs per worker node (default {GPUS_PER_NODE})",
        )
    if output:
        parser.add_argument(
            "--output-uri", help="the fleets' job records and videos on this pyarrow.fs URI (default: a local temp dir)"
        )


def shape_of(args: argparse.Namespace) -> Shape:
    width, height = (int(v) for v in args.size.split("x"))
    return Shape(width, height)


def finish(benchmark: str, **figures) -> dict:
    """The last line of every fleet benchmark: one JSON object, labelled simulated."""
    result = {"benchmark": benchmark, "simulated": True, **figures}
    print(json.dumps(result))
    return result
