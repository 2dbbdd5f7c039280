"""One video's latency, and what it costs in videos per hour, for each way to spend the experts'
GPUs: expert replicas of g GPUs (sequence- and CFG-parallel ranks, stages/parallel.py),
disaggregated or co-located. The real app on logical GPUs. SIMULATED GPUs.

    python -m bench.fleet.layouts [--latency-degrees 1 2 4 8] [--tradeoff-gpus 8 32] [--size 1280x720]

- latency: one 1280x720x81, 40-step video alone on each layout: disaggregated, one replica of g
  GPUs per expert (2g GPUs), and co-located, one replica of g GPUs running both phases (ulysses g,
  or ulysses g/2 x cfg 2); then one co-located replica of 16 (ulysses 8 x cfg 2: 40 heads stop
  Ulysses at 8 in a power of two). Goals: <= 160 s on 8 GPUs in the best layout, <= 90 s on 16.
- trade-off: at each fleet size the same Poisson load (70 % of what the busiest layout keeps up
  with) on the layouts of 1, 4, 8 and 16 GPUs a replica, each the one of its degree with the most
  videos per hour (`t2v plan`): videos per hour, p50 and p95 latency.

A request's GPU time is simulated (scaled by the time scale); the rest (HTTP, the ingress,
hand-offs, the job store, the mp4, the scorer) is this machine's wall time, counted unscaled as
in bench/fleet/saturation.py: each layout's overhead is read from a lone request, and a loaded
request's time beyond it is scaled back to simulated seconds. Nodes have 16 logical GPUs, so a
16-GPU replica packs onto one (on 8-GPU nodes its two CFG groups would span two: not built).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.fleet.harness import (
    LABEL,
    Fleet,
    Nodes,
    Shape,
    add_common_arguments,
    bodies,
    finish,
    load,
    nodes_for,
    poisson_arrivals,
    schedule,
    shape_of,
    sim_settings,
)
from bench.toolkit import log, model_settings
from cluster.sizing import Layout, choose, layouts
from contract.experts import ExpertKind
from contract.settings import ParallelSettings, Settings, SimSettings
from sim.cost_model import CostModel

GOALS = {"latency_8_gpus_s": 160, "latency_16_gpus_s": 90}
GPUS_PER_NODE = 16
LOAD = 0.7  # the Poisson rate, as a fraction of the busiest layout's videos per hour
# Wall requests a second the time scale aims the Poisson load at: low enough that a wide replica's
# own CPU work on a video (unscaled, ~0.1-0.3 s here) stays small beside its scaled GPU time.
WALL_RATE = 0.5
LONE_WALL_S = 5.0  # wall seconds the slowest lone video takes (sets the latency section's time scale)


def latency_layouts(degrees: list[int], cost: CostModel, steps: tuple[int, int], shape: Shape) -> list[Layout]:
    """One replica (per expert, or of both) for each degree g: disaggregated (ulysses g), and
    co-located (ulysses g, and ulysses g/2 x cfg 2); then the 16-GPU co-located replica."""
    found = []
    for degree in degrees:
        pair = layouts(2 * degree, *steps, cost, shape.height, shape.width, shape.frames)
        found += [x for x in pair if x.placement == "disaggregated" and x.degree == degree and x.cfg == 1]
        alone = layouts(degree, *steps, cost, shape.height, shape.width, shape.frames)
        found += [x for x in alone if x.placement == "co_located" and x.degree == degree]
    sixteen = layouts(16, *steps, cost, shape.height, shape.width, shape.frames)
    return found + [next(layout for layout in sixteen if (layout.degree, layout.cfg) == (16, 2))]


def tradeoff_layouts(gpus: int, cost: CostModel, steps: tuple[int, int], shape: Shape) -> list[Layout]:
    """For each degree of 1, 4, 8 and 16 GPUs a replica that fits: the layout with the most videos per hour."""
    found = layouts(gpus, *steps, cost, shape.height, shape.width, shape.frames)
    return [
        choose([layout for layout in found if layout.degree == degree]) for degree in (1, 4, 8, 16) if degree <= gpus
    ]


@contextlib.contextmanager
def deploy(nodes: Nodes, base: Settings, layout: Layout, shape: Shape, gpu: str, time_scale: float) -> Iterator[Fleet]:
    """`layout` deployed on `nodes` (its work folder removed afterwards)."""
    work = Path(tempfile.mkdtemp(prefix="layouts", dir="/tmp"))
    try:
        settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
        settings = settings.model_copy(update={"experts_placement": layout.placement})
        if layout.degree > 1:
            settings = settings.with_parallel_experts(ParallelSettings(ulysses=layout.ulysses, cfg=layout.cfg))
        high, low = ExpertKind.HIGH_NOISE.deployment, ExpertKind.LOW_NOISE.deployment
        experts = {high: (layout.high_noise, layout.high_noise)}
        if layout.placement == "disaggregated":
            experts[low] = (layout.low_noise, layout.low_noise)
        with Fleet(nodes, settings, experts) as fleet:
            yield fleet
    finally:
        shutil.rmtree(work, ignore_errors=True)


def lone_overhead(
    fleet: Fleet, shape: Shape, expected_s: float, time_scale: float, seed: int, priority: str = "batch"
) -> float:
    """Wall seconds a lone video takes beyond its simulated GPU time (the first, small, warms the
    routes), on the pool `priority` picks."""
    warm = Shape(256, 256, shape.frames, shape.steps)
    requests = [{**b, "priority": priority} for b in bodies(warm, 1, seed) + bodies(shape, 2, seed + 1)]
    alone = load(fleet.url, requests, 1)
    if any(r["status"] != 200 for r in alone):
        raise RuntimeError(f"a lone video failed: {[r['status'] for r in alone]}")
    return statistics.median((r["end"] - r["start"]) - expected_s * time_scale for r in alone[1:])


def bench_latency(nodes: Nodes, base: Settings, cases: list[Layout], shape: Shape, gpu: str) -> list[dict]:
    """Each layout alone: one video's simulated seconds end to end."""
    time_scale = round(LONE_WALL_S / max(layout.latency_s for layout in cases), 6)
    rows = []
    for i, layout in enumerate(cases):
        log(f"latency: {layout.placement} {layout.name}, {layout.gpus} GPUs")
        with deploy(nodes, base, layout, shape, gpu, time_scale) as fleet:
            overhead = lone_overhead(fleet, shape, layout.latency_s, time_scale, 30_000 + 10 * i)
        rows.append(
            {
                **layout.summary(),
                "compute_s": layout.latency_s,
                "overhead_ms": overhead * 1000,
                "latency_s": layout.latency_s + overhead,
            }
        )
    return rows


def bench_tradeoff(
    nodes: Nodes, base: Settings, gpus: int, cases: list[Layout], shape: Shape, gpu: str, videos: int
) -> list[dict]:
    """The same Poisson load on each layout of `gpus` GPUs: throughput, p50 and p95 latency."""
    offered = LOAD * max(layout.videos_per_hour for layout in cases) / 3600  # videos per simulated second
    time_scale = round(offered / WALL_RATE, 6)
    arrivals = poisson_arrivals(videos, WALL_RATE, seed=gpus)
    rows = []
    for i, layout in enumerate(cases):
        log(f"trade-off: {gpus} GPUs, {layout.placement} {layout.name}, {videos} videos at {offered * 3600:.1f}/h")
        with deploy(nodes, base, layout, shape, gpu, time_scale) as fleet:
            overhead = lone_overhead(fleet, shape, layout.latency_s, time_scale, 40_000 + 1000 * i)
            loaded = load(fleet.url, bodies(shape, videos, 50_000 + 1000 * i), videos, arrivals=arrivals)
        # beyond the control plane's own wall time (counted once, unscaled), a loaded request's time is simulated
        latencies = sorted(max(0.0, r["end"] - r["start"] - overhead) / time_scale + overhead for r in loaded)
        span = (max(r["end"] for r in loaded) - min(r["start"] for r in loaded)) / time_scale
        rows.append(
            {
                **layout.summary(),
                "offered_per_hour": offered * 3600,
                "capacity_per_hour": layout.videos_per_hour,
                "videos": videos,
                "failed": sum(r["status"] != 200 for r in loaded),
                "videos_per_hour_measured": videos / span * 3600,
                "p50_s": statistics.median(latencies),
                "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
                "alone_s": layout.latency_s + overhead,
                "time_scale": time_scale,
            }
        )
    return rows


def run(args: argparse.Namespace, base: Settings, shape: Shape) -> dict:
    cost = CostModel(args.gpu)
    work = Path(tempfile.mkdtemp(prefix="layouts", dir="/tmp"))
    try:  # the simulated checkpoint's schedule: Wan2.2 A14B's (26 high-noise, 14 low-noise of 40)
        steps = schedule(sim_settings(base, work, SimSettings(gpu=args.gpu), shape), shape.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cases = latency_layouts(args.latency_degrees, cost, steps, shape) if args.latency_degrees else []
    trade = {n: tradeoff_layouts(n, cost, steps, shape) for n in args.tradeoff_gpus}
    largest = max([c.gpus for c in cases] + list(args.tradeoff_gpus) or [0])
    latency, tradeoff = [], {}
    if largest:
        with nodes_for(largest, GPUS_PER_NODE) as nodes:
            if cases:
                latency = bench_latency(nodes, base, cases, shape, args.gpu)
            for n, found in trade.items():
                tradeoff[n] = bench_tradeoff(nodes, base, n, found, shape, args.gpu, args.tradeoff_videos)
    return {"steps": list(steps), "latency": latency, "tradeoff": tradeoff}


def met(result: dict) -> dict:
    def best(gpus: int) -> float | None:
        within = [r["latency_s"] for r in result["latency"] if r["gpus"] <= gpus]
        return min(within) if within else None

    eight, sixteen = best(8), best(16)
    return {
        "latency_8_gpus": None if eight is None else eight <= GOALS["latency_8_gpus_s"],
        "latency_16_gpus": None if sixteen is None else sixteen <= GOALS["latency_16_gpus_s"],
        "no_failures": all(r["failed"] == 0 for rows in result["tradeoff"].values() for r in rows),
    }


def print_tables(result: dict, shape: Shape, gpu: str) -> None:
    if result["latency"]:
        print(f"\n== One {shape.size} x {shape.frames} video, {shape.steps} steps, alone, on {gpu} ({LABEL})")
        print(f"{'placement':>13} {'ranks':>18} {'GPUs':>5} {'replicas':>8} {'one video s':>11} {'control ms':>10}")
        for r in result["latency"]:
            replicas = f"{r['high_noise']}" if r["placement"] == "co_located" else f"{r['high_noise']}+{r['low_noise']}"
            ranks = f"ulysses {r['ulysses']}" + (f" x cfg {r['cfg']}" if r["cfg"] > 1 else "")
            print(
                f"{r['placement']:>13} {ranks:>18} {r['gpus']:>5} {replicas:>8} {r['latency_s']:>11.1f} "
                f"{r['overhead_ms']:>10.0f}"
            )
        print("(one video s: the cost model's GPU time plus the control plane's measured wall time)")
    for gpus, rows in result["tradeoff"].items():
        if not rows:
            continue
        print(f"\n== {gpus} GPUs under the same Poisson load, {rows[0]['offered_per_hour']:.1f} videos/h ({LABEL})")
        print(
            f"{'placement':>13} {'ranks':>18} {'replicas':>8} {'capacity/h':>10} {'videos/h':>9} "
            f"{'alone s':>8} {'p50 s':>8} {'p95 s':>8}"
        )
        for r in rows:
            replicas = f"{r['high_noise']}" if r["placement"] == "co_located" else f"{r['high_noise']}+{r['low_noise']}"
            ranks = f"ulysses {r['ulysses']}" + (f" x cfg {r['cfg']}" if r["cfg"] > 1 else "")
            print(
                f"{r['placement']:>13} {ranks:>18} {replicas:>8} {r['capacity_per_hour']:>10.1f} "
                f"{r['videos_per_hour_measured']:>9.1f} {r['alone_s']:>8.1f} {r['p50_s']:>8.1f} {r['p95_s']:>8.1f}"
            )
        print(
            "(capacity: the layout saturated, from the cost model; videos/h: completions over the run, drain included)"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency-degrees",
        type=int,
        nargs="*",
        default=[1, 2, 4, 8],
        help="GPUs per replica of the latency section (default 1 2 4 8; none: skip)",
    )
    parser.add_argument(
        "--tradeoff-gpus", type=int, nargs="*", default=[8, 32], help="fleet sizes of the trade-off (default 8 32)"
    )
    parser.add_argument("--tradeoff-videos", type=int, default=30, help="Poisson arrivals per layout (default 30)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet.layouts", description=__doc__.splitlines()[0])
    add_common_arguments(parser, nodes=False, output=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    shape, base = shape_of(args), model_settings()
    result = run(args, base, shape)
    print_tables(result, shape, args.gpu)
    return finish("fleet.layouts", gpu=args.gpu, size=shape.size, **result, goals=GOALS, met=met(result))


if __name__ == "__main__":
    main()
