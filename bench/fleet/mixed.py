"""Mixed traffic on one fleet: interactive videos on a wide, low-latency expert pool beside batch
videos on the throughput pool, against a throughput-only fleet of the same GPUs. SIMULATED GPUs.

    python -m bench.fleet.mixed [--gpus 32] [--pool-ulysses 4] [--pool-replicas 1] [--backfill 0]
                                [--interactive-share 0.1] [--size 1280x720]

- throughput-only: every GPU in the default pool (split as `t2v plan` says), batch videos kept in
  flight (2 x GPUs): videos per hour over the window the mixed run measures.
- mixed: `--pool-replicas` co-located replicas of `--pool-ulysses` GPUs in the interactive pool
  (settings `interactive`), the rest in the default pool; with `--backfill N`, up to N batch jobs
  at once lent to the pool (its replicas step interactive videos first). The same batch load, and interactive videos
  (`priority: interactive`) arriving as a Poisson stream at `--interactive-share` of the
  throughput-only fleet's rate. Goals: batch videos per hour >= 0.9 of throughput-only, and the
  interactive videos' p95 <= 1.3x one alone on the interactive pool.

A request's GPU time is simulated; the control plane's wall time counts unscaled (an
interactive video's overhead is read from a lone one, as in bench/fleet/layouts.py).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.fleet.harness import (
    LABEL,
    Fleet,
    Nodes,
    Shape,
    add_common_arguments,
    bodies,
    finish,
    fixed,
    load_async,
    nodes_for,
    poisson_arrivals,
    schedule,
    shape_of,
    sim_settings,
)
from bench.fleet.layouts import lone_overhead
from bench.toolkit import log, model_settings
from cluster.sizing import expert_split
from contract.experts import ExpertKind
from contract.settings import DeploymentSettings, InteractiveSettings, ParallelSettings, Settings, SimSettings
from sim.cost_model import CostModel

GOALS = {"batch_throughput_ratio": 0.9, "interactive_p95_ratio": 1.3}
WALL_RATE = 1.0  # wall batch videos a second the throughput-only fleet makes (what 2 cores keep up with)


def batch_rate(results: list[dict], time_scale: float, start: float, end: float) -> float:
    """Batch videos per simulated hour finished between `start` and `end` (wall)."""
    done = sum(1 for r in results if start <= r["end"] <= end and r["status"] == 200)
    return done / ((end - start) / time_scale) * 3600


def run_fleet(
    nodes: Nodes,
    settings: Settings,
    experts: dict,
    shape: Shape,
    time_scale: float,
    batch: int,
    interactive: list[float] | None,
    expected_s: float,
    seed: int,
) -> dict:
    """Batch videos kept in flight; with `interactive` (wall arrival seconds), interactive videos
    alongside. The batch rate is read over the interactive stream's span (or the middle of the run).
    `seed`: the first of this run's seeds, apart from every other run's (the result cache would
    answer a video made before at once)."""
    concurrency = 2 * nodes.gpus
    with Fleet(nodes, settings, experts) as fleet:
        overhead = 0.0
        if interactive:  # a lone video's overhead on the interactive pool, where the stream runs
            overhead = lone_overhead(fleet, shape, expected_s, time_scale, seed, priority="interactive")

        async def both() -> tuple[list[dict], list[dict]]:
            loads = [load_async(fleet.url, bodies(shape, batch, seed + 10_000), concurrency)]
            if interactive:
                wanted = [{**b, "priority": "interactive"} for b in bodies(shape, len(interactive), seed + 30_000)]
                loads.append(load_async(fleet.url, wanted, len(wanted), arrivals=interactive))
            return tuple(await asyncio.gather(*loads)) + ((),) * (2 - len(loads))

        batch_results, interactive_results = asyncio.run(both())
    if interactive_results:
        start = min(r["start"] for r in interactive_results)
        end = max(r["end"] for r in interactive_results)
    else:  # between the first wave and the drain
        ends = sorted(r["end"] for r in batch_results)
        start, end = ends[concurrency], ends[-concurrency]
    latencies = sorted(max(0.0, r["end"] - r["start"] - overhead) / time_scale + overhead for r in interactive_results)
    return {
        "failed": sum(r["status"] != 200 for r in batch_results + list(interactive_results)),
        "batch_per_hour": batch_rate(batch_results, time_scale, start, end),
        "interactive": len(interactive_results),
        "interactive_p50_s": statistics.median(latencies) if latencies else None,
        "interactive_p95_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "window_s": (end - start) / time_scale,
        "interactive_latencies_s": [round(x, 1) for x in latencies],
    }


def bench_mixed(
    nodes: Nodes,
    base: Settings,
    gpus: int,
    shape: Shape,
    gpu: str,
    pool_ulysses: int,
    share: float,
    count: int,
    pool_replicas: int = 1,
    backfill: int = 0,
) -> dict:
    cost = CostModel(gpu)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, shape.height, shape.width, shape.frames)
    ideal = gpus / (shape.steps * step)  # videos per simulated second of the throughput-only fleet
    time_scale = round(ideal / WALL_RATE, 6)
    work = Path(tempfile.mkdtemp(prefix="mixed", dir="/tmp"))
    try:
        settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
        steps = schedule(settings, shape.steps)
        alone = cost.video_seconds(
            shape.height,
            shape.width,
            shape.frames,
            shape.steps,
            gpus=pool_ulysses,
            offload=cost.needs_swap(pool_ulysses),
        )
        rate = share * ideal / time_scale  # interactive videos a wall second
        one_gpu = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps) * time_scale
        # the batch load at its steady state first
        arrivals = poisson_arrivals(count, rate, seed=gpus, start=1.5 * one_gpu)
        t = arrivals[-1]
        # batch videos that outlast the stream (its last video may wait and run: three alone-times)
        batch = int((t + 3 * alone * time_scale) * WALL_RATE * 1.2) + 2 * gpus

        log(f"throughput-only: {gpus} {gpu} GPUs, {batch} batch videos")
        everyone = fixed(expert_split(gpus, *steps))
        only = run_fleet(nodes, settings, everyone, shape, time_scale, batch, None, alone, seed=60_000)

        narrow = gpus - pool_replicas * pool_ulysses
        # room on each replica for its lent jobs and an interactive video (the router's limit)
        ongoing = 2 + -(-backfill // pool_replicas)
        pool = DeploymentSettings(
            num_cpus=0.5,
            num_gpus=1,
            threads=1,
            min_replicas=pool_replicas,
            max_replicas=pool_replicas,
            max_ongoing_requests=ongoing,
            parallel=ParallelSettings(ulysses=pool_ulysses),
        )
        interactive = InteractiveSettings(enabled=True, experts=pool, placement="co_located", backfill=backfill)
        mixed_settings = settings.model_copy(update={"interactive": interactive})
        log(
            f"mixed: {narrow} GPUs batch + {pool_replicas} x {pool_ulysses} interactive (backfill {backfill}), "
            f"{count} interactive at {share:.0%}"
        )
        mixed = run_fleet(
            nodes,
            mixed_settings,
            fixed(expert_split(narrow, *steps)),
            shape,
            time_scale,
            batch,
            arrivals,
            alone,
            seed=160_000,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "gpus": gpus,
        "gpu": gpu,
        "pool": {"ulysses": pool_ulysses, "replicas": pool_replicas, "placement": "co_located", "backfill": backfill},
        "interactive_share": share,
        "time_scale": time_scale,
        "throughput_only_per_hour": only["batch_per_hour"],
        "mixed_batch_per_hour": mixed["batch_per_hour"],
        "batch_throughput_ratio": mixed["batch_per_hour"] / only["batch_per_hour"],
        "interactive_alone_s": alone,
        "interactive_p50_s": mixed["interactive_p50_s"],
        "interactive_p95_s": mixed["interactive_p95_s"],
        "interactive_p95_ratio": mixed["interactive_p95_s"] / alone,
        "interactive": mixed["interactive"],
        "interactive_latencies_s": mixed["interactive_latencies_s"],  # sorted: where the tail comes from
        "failed": only["failed"] + mixed["failed"],
    }


def print_report(result: dict) -> None:
    print(f"\n== Mixed traffic, {result['gpus']} {result['gpu']} GPUs ({LABEL})")
    pool = result["pool"]
    label = f"mixed ({pool['replicas']} x {pool['ulysses']}-GPU interactive, backfill {pool['backfill']})"
    print(f"{'fleet':>50} {'batch videos/h':>15} {'interactive p50 s':>18} {'p95 s':>8} {'alone s':>8}")
    print(
        f"{'throughput-only (all GPUs batch)':>50} {result['throughput_only_per_hour']:>15.1f} {'-':>18} {'-':>8} {'-':>8}"
    )
    print(
        f"{label:>50} {result['mixed_batch_per_hour']:>15.1f} "
        f"{result['interactive_p50_s']:>18.1f} {result['interactive_p95_s']:>8.1f} {result['interactive_alone_s']:>8.1f}"
    )
    print(
        f"batch throughput {result['batch_throughput_ratio']:.2f}x throughput-only (goal >= "
        f"{GOALS['batch_throughput_ratio']}); interactive p95 {result['interactive_p95_ratio']:.2f}x alone "
        f"(goal <= {GOALS['interactive_p95_ratio']}); {result['interactive']} interactive videos, "
        f"{result['interactive_share']:.0%} of the load"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet.mixed", description=__doc__.splitlines()[0])
    add_common_arguments(parser, output=False)
    parser.add_argument("--gpus", type=int, default=32, help="the fleet's expert GPUs (default 32)")
    parser.add_argument("--pool-ulysses", type=int, default=4, help="GPUs of an interactive replica (default 4)")
    parser.add_argument("--pool-replicas", type=int, default=1, help="replicas of the interactive pool (default 1)")
    parser.add_argument(
        "--backfill", type=int, default=0, help="batch jobs lent to the interactive pool at once (default 0: none)"
    )
    parser.add_argument("--interactive-share", type=float, default=0.1, help="interactive share of the load (0.1)")
    parser.add_argument("--interactive-videos", type=int, default=20, help="interactive videos (default 20)")
    args = parser.parse_args(argv)
    shape, base = shape_of(args), model_settings()
    # one node holds the whole fleet: on nodes of 8, single-GPU batch replicas spread over both can
    # leave no node with the interactive replica's g GPUs free together (STRICT_PACK waits forever)
    with nodes_for(args.gpus, max(args.gpus, args.gpus_per_node)) as nodes:
        result = bench_mixed(
            nodes,
            base,
            args.gpus,
            shape,
            args.gpu,
            args.pool_ulysses,
            args.interactive_share,
            args.interactive_videos,
            args.pool_replicas,
            args.backfill,
        )
    print_report(result)
    met = {
        "batch_throughput": result["batch_throughput_ratio"] >= GOALS["batch_throughput_ratio"],
        "interactive_p95": result["interactive_p95_ratio"] <= GOALS["interactive_p95_ratio"],
        "no_failures": result["failed"] == 0,
    }
    return finish("fleet.mixed", **result, goals=GOALS, met=met)


if __name__ == "__main__":
    main()
