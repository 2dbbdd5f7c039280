"""One video's latency, and what it costs in videos per hour, for each way to spend the experts'
GPUs: expert replicas of g GPUs (sequence- and CFG-parallel ranks, stages/parallel.py),
disaggregated or co-located. The real app on logical GPUs. SIMULATED GPUs.

    python -m bench.fleet.layouts [--latency-degrees 1 2 4 8] [--tradeoff-gpus 8 32] [--size 1280x720]

- latency: one 1280x720x81, 40-step video alone on each layout: disaggregated, one replica of g
  GPUs per expert (2g GPUs), and co-located, one replica of g GPUs running both phases (ulysses g,
  or ulysses g/2 x cfg 2); then one co-located replica of 16 (ulysses 8 x cfg 2: 40 heads stop
  Ulysses at 8 in a power of two); then the fastest of 8 and of 16 again, their decoder on
  `--decode-ranks` GPUs that share the VAE's tiles. Goals: <= 160 s on 8 GPUs in the best layout,
  <= 90 s on 16 (a split decoder's GPUs beyond the one every layout has count).
- few-step: one 720p video with a distilled adapter (`lightning`: 4 steps, no guidance, flow
  shift 5, as lightx2v's Wan2.2 Lightning pair samples), named by the request and nothing else:
  on one GPU and in the fastest 8-GPU layout, the decoder on one GPU and its tiles shared over
  `--decode-ranks` GPUs; each stage's share of the video. Goal: <= 30 s on 8 H100s (LightX2V
  reports 44 s on one H200 with FP8). Then videos per hour per GPU at 8 expert GPUs with and
  without the adapter, the decoder GPUs it needs counted (cost model).
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
import json
import math
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
from contract.settings import DecodingSettings, ParallelSettings, Settings, SimSettings
from sim.cost_model import CostModel
from stages.adapter_store import TEST_ADAPTERS_DIR
from stages.decoder import simulated_decode_share

GOALS = {"latency_8_gpus_s": 160, "latency_16_gpus_s": 90, "few_step_8_gpus_s": 30}
# A Lightning pair's sampling (lightx2v's Wan2.2-Lightning adapters: 4 steps, CFG off, shift 5).
FEW_STEP = {"steps": 4, "guidance": 1.0, "guidance_2": 1.0, "flow_shift": 5.0}
ADAPTER = "lightning"
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


def with_decoder_ranks(settings: Settings, ranks: int) -> Settings:
    """`settings` with a decoder of `ranks` GPUs that share the VAE's tiles (one: untiled)."""
    if ranks == 1:
        return settings
    deployments = dict(settings.deployments)
    deployments["Decoder"] = deployments["Decoder"].model_copy(update={"parallel": ParallelSettings(ulysses=ranks)})
    return settings.model_copy(update={"deployments": deployments, "decoding": DecodingSettings(tiled=True)})


def few_step_layouts(
    cost: CostModel, steps: tuple[int, int], shape: Shape, base: Settings, decode_ranks: int
) -> list[tuple[Layout, int]]:
    """(layout, decoder GPUs): one GPU, and the fastest layout of at most 8, each with the decode
    on one GPU and over `decode_ranks`."""
    cases = []
    for ranks in (1, decode_ranks):
        share = simulated_decode_share(with_decoder_ranks(base, ranks), shape.height, shape.width, shape.frames)
        found = {n: layouts(n, *steps, cost, shape.height, shape.width, shape.frames, False, share) for n in (1, 8)}
        cases += [(choose(found[1], "latency"), ranks), (choose(found[8], "latency"), ranks)]
    return cases


def lightning_store(work: Path) -> Path:
    """An adapter store with `lightning`: the shipped test adapter's weights (a simulated expert
    never applies them) and a distilled pair's sampling settings in its adapter.json."""
    store = work / "adapters"
    shutil.copytree(TEST_ADAPTERS_DIR / "studio", store / ADAPTER)
    about = {"description": "4 steps, no guidance (a Lightning pair's sampling)", **FEW_STEP}
    (store / ADAPTER / "adapter.json").write_text(json.dumps(about))
    return store


@contextlib.contextmanager
def deploy(
    nodes: Nodes,
    base: Settings,
    layout: Layout,
    shape: Shape,
    gpu: str,
    time_scale: float,
    decode_ranks: int = 1,
    adapters: Path | None = None,
) -> Iterator[Fleet]:
    """`layout` deployed on `nodes` (its work folder removed afterwards), its decoder `decode_ranks` GPUs."""
    work = Path(tempfile.mkdtemp(prefix="layouts", dir="/tmp"))
    try:
        settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=time_scale), shape)
        settings = with_decoder_ranks(settings, decode_ranks)
        if adapters is not None:
            settings = settings.model_copy(
                update={"adapters": settings.adapters.model_copy(update={"uri": str(adapters)})}
            )
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
    fleet: Fleet,
    shape: Shape,
    expected_s: float,
    time_scale: float,
    seed: int,
    priority: str = "batch",
    lora: list[dict] | None = None,
) -> float:
    """Wall seconds a lone video takes beyond its simulated GPU time (the first, small, warms the
    routes), on the pool `priority` picks; with `lora`, the adapters set the steps."""
    warm = Shape(256, 256, shape.frames, shape.steps)
    requests = [{**b, "priority": priority} for b in bodies(warm, 1, seed) + bodies(shape, 2, seed + 1)]
    if lora:
        requests = [{**{k: v for k, v in r.items() if k != "steps"}, "lora": lora} for r in requests]
    alone = load(fleet.url, requests, 1)
    if any(r["status"] != 200 for r in alone):
        raise RuntimeError(f"a lone video failed: {[r['status'] for r in alone]}")
    return statistics.median((r["end"] - r["start"]) - expected_s * time_scale for r in alone[1:])


def split_decode_layouts(
    cost: CostModel, steps: tuple[int, int], shape: Shape, base: Settings, decode_ranks: int
) -> list[tuple[Layout, int]]:
    """The fastest layouts of 8 and 16 GPUs again, their decoder `decode_ranks` GPUs sharing the tiles."""
    share = simulated_decode_share(with_decoder_ranks(base, decode_ranks), shape.height, shape.width, shape.frames)
    found = {n: layouts(n, *steps, cost, shape.height, shape.width, shape.frames, True, share) for n in (8, 16)}
    return [(choose(found[n], "latency"), decode_ranks) for n in (8, 16)]


def bench_latency(nodes: Nodes, base: Settings, cases: list[tuple[Layout, int]], shape: Shape, gpu: str) -> list[dict]:
    """Each (layout, decoder GPUs) alone: one video's simulated seconds end to end."""
    time_scale = round(LONE_WALL_S / max(layout.latency_s for layout, _ in cases), 6)
    rows = []
    for i, (layout, ranks) in enumerate(cases):
        log(f"latency: {layout.placement} {layout.name}, {layout.gpus} GPUs, decoder on {ranks}")
        with deploy(nodes, base, layout, shape, gpu, time_scale, ranks) as fleet:
            overhead = lone_overhead(fleet, shape, layout.latency_s, time_scale, 30_000 + 10 * i)
        rows.append(
            {
                **layout.summary(),
                "decoder_gpus": ranks,
                "compute_s": layout.latency_s,
                "overhead_ms": overhead * 1000,
                "latency_s": layout.latency_s + overhead,
            }
        )
    return rows


def bench_few_step(
    nodes: Nodes, base: Settings, cases: list[tuple[Layout, int]], shape: Shape, gpu: str, cost: CostModel
) -> list[dict]:
    """Each (layout, decoder GPUs) alone with the `lightning` adapter: one video end to end, and
    each stage's simulated seconds."""
    time_scale = round(LONE_WALL_S / max(layout.latency_s for layout, _ in cases), 6)
    work = Path(tempfile.mkdtemp(prefix="fewstep", dir="/tmp"))
    rows = []
    try:
        store = lightning_store(work)
        for i, (layout, ranks) in enumerate(cases):
            log(f"few-step: {layout.placement} {layout.name}, {layout.gpus} GPUs, decoder on {ranks}")
            with deploy(nodes, base, layout, shape, gpu, time_scale, ranks, store) as fleet:
                overhead = lone_overhead(
                    fleet, shape, layout.latency_s, time_scale, 60_000 + 10 * i, lora=[{"name": ADAPTER}]
                )
            share = simulated_decode_share(with_decoder_ranks(base, ranks), shape.height, shape.width, shape.frames)
            stages = {
                "encode_s": cost.encode_seconds(guidance=False),
                "decode_s": cost.decode_seconds(shape.height, shape.width, shape.frames) * share,
            }
            stages["denoise_s"] = layout.latency_s - stages["encode_s"] - stages["decode_s"]
            rows.append(
                {
                    **layout.summary(),
                    "decoder_gpus": ranks,
                    **stages,
                    "overhead_ms": overhead * 1000,
                    "latency_s": layout.latency_s + overhead,
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def per_gpu(cost: CostModel, shape: Shape, steps: tuple[int, int], guidance: bool, gpus: int = 8) -> dict:
    """The most videos per hour `gpus` expert GPUs make (cost model), and per GPU with the decoder
    GPUs that keep up with them counted (one untiled decode a GPU at a time)."""
    best = choose(layouts(gpus, *steps, cost, shape.height, shape.width, shape.frames, guidance))
    decode = cost.decode_seconds(shape.height, shape.width, shape.frames)
    decoders = max(1, math.ceil(best.videos_per_hour * decode / 3600))
    return {
        **best.summary(),
        "steps": sum(steps),
        "guidance": guidance,
        "decoder_gpus": decoders,
        "videos_per_hour_per_gpu": best.videos_per_hour / (best.gpus + decoders),
    }


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
    try:  # the simulated checkpoint's schedules: Wan2.2 A14B's (26 high-noise, 14 low-noise of 40), and the adapter's
        simulated = sim_settings(base, work, SimSettings(gpu=args.gpu), shape)
        steps = schedule(simulated, shape.steps)
        few_steps = schedule(simulated, FEW_STEP["steps"], FEW_STEP["flow_shift"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cases = [(c, 1) for c in latency_layouts(args.latency_degrees, cost, steps, shape)] if args.latency_degrees else []
    if cases and args.decode_ranks > 1:
        cases += split_decode_layouts(cost, steps, shape, base, args.decode_ranks)
    few = few_step_layouts(cost, few_steps, shape, base, args.decode_ranks) if args.decode_ranks else []
    trade = {n: tradeoff_layouts(n, cost, steps, shape) for n in args.tradeoff_gpus}
    largest = max([c.gpus for c, _ in cases + few] + list(args.tradeoff_gpus) or [0])
    latency, few_step, tradeoff = [], [], {}
    if largest:
        with nodes_for(largest, GPUS_PER_NODE) as nodes:
            if cases:
                latency = bench_latency(nodes, base, cases, shape, args.gpu)
            if few:
                few_step = bench_few_step(nodes, base, few, shape, args.gpu, cost)
            for n, found in trade.items():
                tradeoff[n] = bench_tradeoff(nodes, base, n, found, shape, args.gpu, args.tradeoff_videos)
    per_gpu_rows = [per_gpu(cost, shape, steps, True)] + ([per_gpu(cost, shape, few_steps, False)] if few else [])
    return {
        "steps": list(steps),
        "latency": latency,
        "few_step": few_step,
        "per_gpu_8": per_gpu_rows,
        "tradeoff": tradeoff,
    }


def met(result: dict) -> dict:
    def gpus(row: dict) -> int:  # the experts', and a split decoder's beyond the one every layout has
        return row["gpus"] + row.get("decoder_gpus", 1) - 1

    def best(most: int) -> float | None:
        within = [r["latency_s"] for r in result["latency"] if gpus(r) <= most]
        return min(within) if within else None

    eight, sixteen = best(8), best(16)
    few = [r["latency_s"] for r in result["few_step"] if r["gpus"] <= 8]
    return {
        "latency_8_gpus": None if eight is None else eight <= GOALS["latency_8_gpus_s"],
        "latency_16_gpus": None if sixteen is None else sixteen <= GOALS["latency_16_gpus_s"],
        "few_step_8_gpus": min(few) <= GOALS["few_step_8_gpus_s"] if few else None,
        "no_failures": all(r["failed"] == 0 for rows in result["tradeoff"].values() for r in rows),
    }


def print_tables(result: dict, shape: Shape, gpu: str) -> None:
    if result["latency"]:
        print(f"\n== One {shape.size} x {shape.frames} video, {shape.steps} steps, alone, on {gpu} ({LABEL})")
        print(
            f"{'placement':>13} {'ranks':>18} {'GPUs':>5} {'replicas':>8} {'decoder':>7} {'one video s':>11} "
            f"{'control ms':>10}"
        )
        for r in result["latency"]:
            replicas = f"{r['high_noise']}" if r["placement"] == "co_located" else f"{r['high_noise']}+{r['low_noise']}"
            ranks = f"ulysses {r['ulysses']}" + (f" x cfg {r['cfg']}" if r["cfg"] > 1 else "")
            print(
                f"{r['placement']:>13} {ranks:>18} {r['gpus']:>5} {replicas:>8} {r['decoder_gpus']:>7} "
                f"{r['latency_s']:>11.1f} {r['overhead_ms']:>10.0f}"
            )
        print(
            "(one video s: the cost model's GPU time plus the control plane's measured wall time; GPUs: the experts';"
            " decoder: its GPUs, one untiled, more sharing the VAE's tiles)"
        )
    if result["few_step"]:
        print(f"\n== One {shape.size} x {shape.frames} video with a 4-step unguided adapter, alone, on {gpu} ({LABEL})")
        print(
            f"{'placement':>13} {'ranks':>12} {'GPUs':>5} {'decoder':>7} {'encode s':>8} {'denoise s':>9} "
            f"{'decode s':>8} {'control ms':>10} {'one video s':>11} {'decode %':>8}"
        )
        for r in result["few_step"]:
            print(
                f"{r['placement']:>13} {'ulysses ' + str(r['ulysses']):>12} {r['gpus']:>5} {r['decoder_gpus']:>7} "
                f"{r['encode_s']:>8.2f} {r['denoise_s']:>9.1f} {r['decode_s']:>8.1f} {r['overhead_ms']:>10.0f} "
                f"{r['latency_s']:>11.1f} {100 * r['decode_s'] / r['latency_s']:>7.0f}%"
            )
        print("(decoder: GPUs decoding the video's VAE tiles, one: untiled; GPUs: the experts')")
    if result["per_gpu_8"]:
        print(f"\n== Videos per hour at 8 expert GPUs, {shape.size} x {shape.frames}, on {gpu} (cost model, {LABEL})")
        print(f"{'sampling':>22} {'layout':>24} {'videos/h':>9} {'decoder GPUs':>12} {'per GPU':>8}")
        for r in result["per_gpu_8"]:
            sampling = f"{r['steps']} steps" + (", guided" if r["guidance"] else ", unguided adapter")
            layout = f"{r['placement']} ulysses {r['ulysses']}" + (f" x cfg {r['cfg']}" if r["cfg"] > 1 else "")
            print(
                f"{sampling:>22} {layout:>24} {r['videos_per_hour']:>9.1f} {r['decoder_gpus']:>12} "
                f"{r['videos_per_hour_per_gpu']:>8.2f}"
            )
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
    parser.add_argument(
        "--decode-ranks",
        type=int,
        default=4,
        help="GPUs of a split decoder: the few-step section's, and the fastest 8- and 16-GPU latency rows again "
        "(default 4; 0: skip the few-step section, 1: no split rows)",
    )


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
