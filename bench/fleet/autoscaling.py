"""The autoscaling ramp: closed-loop clients 1 -> 16 -> 1 with Poisson think times on a fleet whose
experts scale from one replica each up to the `t2v plan` split; replicas and requests in flight over
time (a PNG, `--plot`), the wall seconds to Serve's decision, to added capacity and back, failed
requests. SIMULATED GPUs.

    python -m bench.fleet.autoscaling [--ramp-gpus 16] [--ramp-peak 16] [--ramp-seconds 10 75 40] [--plot PNG]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.fleet.harness import (
    APP,
    LABEL,
    Fleet,
    Nodes,
    Shape,
    add_common_arguments,
    bodies,
    finish,
    nodes_for,
    schedule,
    shape_of,
    sim_settings,
)
from bench.toolkit import log, model_settings
from cluster.sizing import expert_split
from contract.experts import ExpertKind
from contract.settings import Settings, SimSettings
from sim.cost_model import CostModel

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


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def print_report(ramp: dict, shape: Shape) -> None:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def phases_of(args: argparse.Namespace) -> tuple:
    return tuple(zip((1, args.ramp_peak, 1), args.ramp_seconds, strict=True))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, output=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    shape, base = shape_of(args), model_settings()
    ramp = None
    if args.ramp_gpus:
        with nodes_for(args.ramp_gpus, args.gpus_per_node) as nodes:
            ramp = bench_autoscale(nodes, base, args.ramp_gpus, shape, args.gpu, args.plot, phases_of(args))
        print_report(ramp, shape)
    scales_back = None if ramp is None else ramp["scaled_back_s"] is not None
    met = {"no_failures": not (ramp or {}).get("failed"), "scales_back": scales_back}
    return finish("fleet.autoscaling", gpu=args.gpu, size=shape.size, autoscaling=ramp, met=met)


if __name__ == "__main__":
    main()
