"""A fleet's throughput at saturation against ideal, and its latency at low load against pure
compute: the real app over HTTP on `Nodes`, experts split as `t2v plan --gpus N` says. SIMULATED GPUs.

    python -m bench.fleet.saturation [--gpus 8 16] [--size 1280x720] [--rate 3] [--window 48]

- saturation: `2 x GPUs` requests in flight (`POST /v1/videos/sync`), the completion rate (a
  least-squares slope) over `--window` completions between the first wave and the drain, against
  ideal = GPUs / (expert GPU-seconds per video). Goal >= 0.95;
- low load: one request at a time, p50 against the cost model's seconds for the video (encode +
  every step + decode); the time outside the simulated GPUs (HTTP, ingress, hand-offs, job store,
  mp4, scorer) is this machine's wall time, unscaled, as it would be on a real cluster. Goal <= 1.02.
"""

from __future__ import annotations

import argparse
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
    load,
    nodes_for,
    schedule,
    shape_of,
    sim_settings,
)
from bench.toolkit import log, model_settings
from cluster.sizing import expert_split
from contract.experts import ExpertKind
from contract.settings import Quantization, QuantizationSettings, Settings, SimSettings
from contract.storage import OutputStore, child_uri
from sim.cost_model import SWAPS_PER_VIDEO, CostModel

WALL_VIDEOS_PER_SECOND = 3.0  # the rate the time scale aims the ideal fleet at: what 2 cores keep up with
WINDOW = 48  # completions a saturation rate is read over
GOALS = {"saturation": 0.95, "low_load": 1.02}


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
    quantization: Quantization = "none",
) -> dict:
    """Saturation throughput and low-load latency of one fleet, in simulated seconds; job records
    and videos under `output_uri` when given (counted there afterwards). `placement`:
    disaggregated (experts split as `t2v plan` says) or co_located (every GPU runs both).
    `alone`: low-load requests, the first of which (a small one) warms the routes; `rate`: wall videos a second
    of the ideal fleet (sets the time scale); `window`: completions the saturation rate is read
    over, between the first wave and the drain; `quantization`: of both experts' weights."""
    cost = CostModel(gpu, quantization=quantization)
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, shape.height, shape.width, shape.frames)
    ideal = gpus / (shape.steps * step)  # videos per simulated second: GPUs / expert GPU-seconds per video
    time_scale = round(ideal / rate, 6)  # the ideal fleet makes `rate` videos a wall second
    work = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
    both = QuantizationSettings(high_noise=quantization, low_noise=quantization)
    settings = settings.model_copy(update={"experts_placement": placement, "quantization": both})
    high_steps, low_steps = schedule(settings, shape.steps)
    co_located = placement == "co_located"
    split = expert_split(gpus, high_steps, low_steps)
    experts = {ExpertKind.HIGH_NOISE.deployment: (gpus, gpus)} if co_located else fixed(split)
    concurrency = 2 * gpus
    n = 2 * concurrency + window
    layout = "both experts on each" if co_located else f"{split.high_noise} high-noise, {split.low_noise} low-noise"
    weights = "" if quantization == "none" else f", experts in {quantization}"
    log(f"{gpus} {gpu} GPUs ({layout}{weights}), time scale {time_scale:g}")
    name = f"fleet-{gpus}-{gpu}-{placement}" + ("" if quantization == "none" else f"-{quantization}")
    output = child_uri(output_uri, name) if output_uri else None
    try:
        with Fleet(nodes, settings, experts, output) as fleet:
            log(f"  up in {fleet.startup_seconds:.0f} s; low load: {alone} videos one at a time")
            # the first warms the routes at a fraction of a video's GPU time: the same frames and steps
            # cost every stage the same CPU work at any size (a simulated latent and video are stand-ins)
            warm = Shape(256, 256, shape.frames, shape.steps)
            alone = load(fleet.url, bodies(warm, 1, 10_000) + bodies(shape, alone - 1, 10_001), 1)
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
        "quantization": quantization,
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


def met(fleets: list[dict]) -> dict:
    """A fleet whose requests failed meets nothing: failures finish fast and read as speed."""
    if not fleets:
        return {"saturation": None, "low_load": None, "no_failures": None}
    served = all(f["failed"] == 0 for f in fleets)
    return {
        "saturation": served and all(f["saturation_ratio"] >= GOALS["saturation"] for f in fleets),
        "low_load": served and all(f["low_load_ratio"] <= GOALS["low_load"] for f in fleets),
        "no_failures": served,
    }


def print_table(fleets: list[dict], shape: Shape, gpu: str) -> None:
    print(f"\n== Fleet, {shape.size} x {shape.frames} frames, {shape.steps} steps, {gpu} ({LABEL})")
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


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """How a fleet is measured (here and in the placements)."""
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # (32 and up measure this host's 2 cores more than the fleet: on request)
    parser.add_argument("--gpus", type=int, nargs="*", default=[8, 16], help="fleet sizes (default 8 16; none: skip)")
    add_measure_arguments(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.window < 4:
        parser.error("--window must be at least 4 completions")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    shape, base = shape_of(args), model_settings()
    fleets = []
    if args.gpus:
        with nodes_for(max(args.gpus), args.gpus_per_node) as nodes:
            measure = {"rate": args.rate, "window": args.window}
            fleets = [bench_fleet(nodes, base, n, shape, args.gpu, args.output_uri, **measure) for n in args.gpus]
        print_table(fleets, shape, args.gpu)
    return finish("fleet.saturation", gpu=args.gpu, size=shape.size, fleets=fleets, goals=GOALS, met=met(fleets))


if __name__ == "__main__":
    main()
