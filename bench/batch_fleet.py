"""The Ray Data batch engine on a simulated GPU fleet: a 1,000-row table at 8 and 32 GPUs. SIMULATED GPUs.

    python -m bench.batch_fleet [--gpus 8 32] [--rows 1000] [--template-share 0 0.8] [--rate 4]

On the local multi-node Ray cluster of bench/fleet/harness.py (`Nodes`: a GPU-less head and
workers of 8 logical GPUs; no Serve app), each table runs through `cluster.batch.BatchRun` on the
data engine (cluster/data_engine.py: one Ray Data actor pool per stage, sized from
`Settings.deployments`) with `device: sim`: every stage's real code path with the model compute replaced by the cost
model's seconds (sim/gpu.py, docs/scaling.md). The experts' pools hold one logical
GPU per actor, split between high- and low-noise as `t2v plan --gpus N` says; the text encoder and
decoder pools sit beside them without a logical GPU, each actor one simulated GPU of its own (as
bench/fleet/ places them on the head), so the N GPUs are the experts'.

The table: `--template-share` of its rows are template rows (groups of `--variants` slot variants
of one template and seed, as an ad studio's campaigns: the first row of a group computes the
high-noise phase, the rest read it from the latent cache), the rest distinct free-form prompts
and seeds. Every row is 1280x720, 81 frames, 40 steps.

Measured from the manifest the run writes, in simulated seconds (wall / `sim.time_scale`; the
scale is chosen per run so that the ideal fleet makes `--rate` rows a wall second, what this
2-core machine's control plane keeps up with):
- rows per hour over the table's makespan (first row in to last row out) against the ideal: the
  bottleneck pool's GPUs over its GPU-seconds per row from the cost model;
- per pool, GPU utilisation: busy seconds summed from the rows' stage timings over pool GPUs x
  makespan, against the utilisation the ideal run would have (the bottleneck pool's is 1).
Every figure is labelled SIMULATED. Prints tables, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.fleet.harness import GPUS_PER_NODE, LABEL, Nodes, Shape, schedule, sim_settings
from bench.fleet.template_cache import TEMPLATE_VARIANTS
from bench.toolkit import log, model_settings, rounded
from cluster.sizing import ExpertSplit, expert_split
from contract.experts import ExpertKind
from contract.settings import Settings, SimSettings
from sim.cost_model import GPUS, CostModel

WALL_ROWS_PER_SECOND = 4.0  # the ideal fleet's rows a wall second: what 2 cores keep up with across 5 pools
VARIANTS = 20  # rows of one template group
POOLS = ("encode", "high_noise", "low_noise", "decode")
# Slot variants of three templates (contract/templates.yaml), 20 each; a group takes them in turn.
TEMPLATES = {
    "product_showcase": TEMPLATE_VARIANTS,
    "pet_portrait": [
        {"animal": a, "place": p}
        for a in ("cat", "dog", "rabbit", "parrot", "hamster")
        for p in ("a sunny garden", "a kitchen", "a park", "a living room")
    ],
    "scene": [
        {"subject": s, "environment": e}
        for s in ("a cyclist", "a dancer", "a skateboarder", "a runner", "a street musician")
        for e in ("in a city street at night", "on a beach", "in a snowy forest", "in a desert")
    ],
}


def table(rows: int, share: float, shape: Shape, variants: int = VARIANTS) -> tuple[list[dict], int]:
    """`rows` request rows, round(share x rows) of them template rows in groups of `variants`
    (one template and seed each: a group shares its high-noise phase), the rest free-form with
    distinct prompts and seeds. Returns the rows and the number of groups."""
    size = {"size": shape.size, "num_frames": shape.frames, "steps": shape.steps}
    templated = round(share * rows)
    groups = math.ceil(templated / variants) if templated else 0
    out = []
    for i in range(templated):
        group, variant = divmod(i, variants)
        name = list(TEMPLATES)[group % len(TEMPLATES)]
        slots = TEMPLATES[name][variant % len(TEMPLATES[name])]
        out.append(
            {"id": f"tpl-{group:03d}-{variant:02d}", "template": name, "slots": slots, "seed": 100 + group, **size}
        )
    for i in range(rows - templated):
        out.append(
            {"id": f"free-{i:04d}", "prompt": f"a ball number {i} rolling on the grass", "seed": 10_000 + i, **size}
        )
    return out, groups


def pool_work(
    cost: CostModel, shape: Shape, steps: tuple[int, int], rows: int, template_rows: int, groups: int
) -> dict[str, float]:
    """Simulated GPU-seconds each pool spends on the table, from the cost model. The text encoder
    encodes one prompt a row (the negative prompt and a template's base prompt come from the cache
    after their first); the high-noise expert runs for the free-form rows and the first row of each
    template group only; the low-noise expert and the decoder for every row."""
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, shape.height, shape.width, shape.frames)
    high_steps, low_steps = steps
    return {
        "encode": rows * cost.encode_seconds(guidance=False),
        "high_noise": (rows - template_rows + groups) * high_steps * step,
        "low_noise": rows * low_steps * step,
        "decode": rows * cost.decode_seconds(shape.height, shape.width, shape.frames),
    }


def ideal(work: dict[str, float], gpus: dict[str, int], rows: int) -> dict:
    """The ideal run: every pool busy in parallel, so the rate is the bottleneck pool's (its GPUs
    over its GPU-seconds per row); each pool's utilisation at that rate."""
    rates = {pool: gpus[pool] * rows / seconds for pool, seconds in work.items() if seconds > 0}
    bottleneck = min(rates, key=rates.__getitem__)
    rate = rates[bottleneck]  # rows per simulated second
    return {
        "rows_per_second": rate,
        "bottleneck": bottleneck,
        "utilisation": {pool: seconds / rows * rate / gpus[pool] for pool, seconds in work.items()},
    }


def share_split(gpus: int, steps: tuple[int, int], rows: int, template_rows: int, groups: int) -> ExpertSplit:
    """The expert split `t2v plan --high-cost` would give this table: the high-noise expert's
    work per row scaled by the share of rows that compute it."""
    return expert_split(gpus, *steps, high_cost=(rows - template_rows + groups) / rows)


def pool_settings(settings: Settings, split: ExpertSplit, encoders: int, decoders: int) -> Settings:
    """Fixed pool sizes: the experts one logical GPU per actor as split; the rest without a GPU."""
    sizes = {
        ExpertKind.HIGH_NOISE.deployment: (split.high_noise, 1),
        ExpertKind.LOW_NOISE.deployment: (split.low_noise, 1),
        "TextEncoder": (encoders, 0),
        "Decoder": (decoders, 0),
        "Ingress": (1, 0),  # the validation pool: a few ms of CPU a row
    }
    deployments = dict(settings.deployments)
    for name, (actors, gpus) in sizes.items():
        deployments[name] = deployments[name].model_copy(
            update={"num_gpus": gpus, "num_cpus": 0.5, "threads": 1, "min_replicas": actors, "max_replicas": actors}
        )
    return settings.model_copy(update={"deployments": deployments})


def bench_table(
    base: Settings,
    gpus: int,
    share: float,
    rows: int,
    shape: Shape,
    gpu: str,
    rate: float = WALL_ROWS_PER_SECOND,
    variants: int = VARIANTS,
) -> dict:
    """One table through BatchRun on the data engine, on the running `Nodes`; figures from its manifest."""
    import pyarrow.parquet as pq
    import ray.data

    from cluster.batch import BatchRun
    from cluster.data_engine import DataEngine
    from cluster.prompt_table import read_table
    from contract.storage import OutputStore

    cost = CostModel(gpu)
    work_dir = Path(tempfile.mkdtemp(prefix="batch-fleet", dir="/tmp"))
    high_low = schedule(sim_settings(base, work_dir, SimSettings(gpu=gpu), shape), shape.steps)
    split = expert_split(gpus, *high_low)  # as `t2v plan --gpus N` splits them
    encoders, decoders = max(1, gpus // 16), max(2, gpus // 8)
    body, groups = table(rows, share, shape, variants)
    templated = sum("template" in r for r in body)
    work = pool_work(cost, shape, high_low, rows, templated, groups)
    pool_gpus = {"encode": encoders, "high_noise": split.high_noise, "low_noise": split.low_noise, "decode": decoders}
    best = ideal(work, pool_gpus, rows)
    time_scale = round(best["rows_per_second"] / rate, 8)  # the ideal fleet makes `rate` rows a wall second
    settings = sim_settings(base, work_dir, SimSettings(gpu=gpu, time_scale=time_scale), shape)
    settings = pool_settings(settings, split, encoders, decoders)
    source = work_dir / "table.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in body))
    table_rows, _ = read_table(str(source))
    output = work_dir / "out"
    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = 600  # every pool up before the first row: start-up is not the run
    context.enable_progress_bars = False
    log(
        f"{gpus} {gpu} GPUs ({split.high_noise} high-noise, {split.low_noise} low-noise; {encoders} encoder, "
        f"{decoders} decoder actors), {rows} rows, {templated} template rows in {groups} groups, "
        f"time scale {time_scale:g}"
    )
    lines = []

    def progress(line: str) -> None:
        lines.append(line)
        if len(lines) % 100 == 0:
            log(f"  {line}")

    started = time.monotonic()
    try:
        engine = DataEngine(settings)
        summary = asyncio.run(BatchRun(table_rows, engine, OutputStore(str(output)), log=progress).run())
        wall = time.monotonic() - started
        manifest = pq.read_table(output / "manifest.parquet").to_pylist()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    done = [m for m in manifest if m["status"] == "completed"]
    ends = sorted(m["finished_at"].timestamp() for m in done)
    # first row in to last row out: a row's start is its finish less its stages' seconds (the
    # first row waits on no queue), so start-up of the pools (before any row) is left out
    first = min(m["finished_at"].timestamp() - m["seconds_total"] for m in done)
    makespan = (ends[-1] - first) / time_scale
    hit = [m for m in done if "boundary" in (m["cache_hits"] or [])]
    busy = {pool: sum(m[f"seconds_{pool}"] or 0.0 for m in done) / time_scale for pool in POOLS}
    # A boundary hit's high-noise seconds are the wait for its group's first row (or a read): no GPU work
    waited = sum(m["seconds_high_noise"] or 0.0 for m in hit) / time_scale
    busy["high_noise"] -= waited
    # the steady rate between the first and last tenth of completions, for comparison
    inner = ends[len(ends) // 10 : len(ends) - len(ends) // 10]
    steady = time_scale / statistics.linear_regression(range(len(inner)), inner).slope if len(inner) > 2 else None
    replanned = share_split(gpus, high_low, rows, templated, groups)
    replanned_gpus = {**pool_gpus, "high_noise": replanned.high_noise, "low_noise": replanned.low_noise}
    measured = len(done) / makespan
    return {
        "gpus": gpus,
        "gpu": gpu,
        "nodes": -(-gpus // GPUS_PER_NODE),
        "rows": rows,
        "template_share": share,
        "template_rows": templated,
        "groups": groups,
        "split": [split.high_noise, split.low_noise],
        "steps": list(high_low),
        "pool_gpus": pool_gpus,
        "time_scale": time_scale,
        "completed": summary["completed"],
        "failed": summary["failed"],
        "boundary_hits": len(hit),
        "wall_s": wall,
        "makespan_s": makespan,
        "rows_per_hour": measured * 3600,
        "steady_rows_per_hour": steady * 3600 if steady else None,
        "ideal_rows_per_hour": best["rows_per_second"] * 3600,
        "ratio": measured / best["rows_per_second"],
        "bottleneck": best["bottleneck"],
        "utilisation": {pool: busy[pool] / (pool_gpus[pool] * makespan) for pool in POOLS},
        # the cost model's GPU-seconds over the measured makespan: the utilisation without this
        # machine's per-row CPU work (unpacking, the scheduler's steps) that the stage timings include
        "modelled_utilisation": {pool: work[pool] / (pool_gpus[pool] * makespan) for pool in POOLS},
        "ideal_utilisation": best["utilisation"],
        "boundary_wait_s": waited,
        "replanned_split": [replanned.high_noise, replanned.low_noise],
        "replanned_ideal_rows_per_hour": ideal(work, replanned_gpus, rows)["rows_per_second"] * 3600,
    }


def print_tables(runs: list[dict], shape: Shape, gpu: str) -> None:
    print(f"\n== Batch, data engine, {shape.size} x {shape.frames} frames, {shape.steps} steps, {gpu} ({LABEL})")
    print(
        f"{'GPUs':>5} {'split':>7} {'rows':>5} {'tpl share':>9} {'groups':>6} {'scale':>9} {'failed':>6} "
        f"{'rows/h':>7} {'ideal/h':>8} {'ratio':>6} {'bottleneck':>11} {'re-split/h':>10}"
    )
    for r in runs:
        print(
            f"{r['gpus']:>5} {r['split'][0]:>3}:{r['split'][1]:<3} {r['rows']:>5} {r['template_share']:>9.2f} "
            f"{r['groups']:>6} {r['time_scale']:>9.3g} {r['failed']:>6} {r['rows_per_hour']:>7.1f} "
            f"{r['ideal_rows_per_hour']:>8.1f} {r['ratio']:>6.3f} {r['bottleneck']:>11} "
            f"{r['replanned_ideal_rows_per_hour']:>10.1f}"
        )
    print(
        "(ideal: the bottleneck pool's GPUs / its GPU-seconds per row, template rows after their group's first\n"
        " skipping the high-noise phase; re-split: the ideal with the experts split for this table's share)"
    )
    print(f"\n== GPU utilisation per pool, measured (ideal) ({LABEL})")
    print(f"{'GPUs':>5} {'tpl share':>9} " + " ".join(f"{pool:>17}" for pool in POOLS))
    for r in runs:
        cells = [
            f"{r['pool_gpus'][pool]:>2}x {r['utilisation'][pool]:>5.3f} ({r['ideal_utilisation'][pool]:.3f})"
            for pool in POOLS
        ]
        print(f"{r['gpus']:>5} {r['template_share']:>9.2f} " + " ".join(f"{c:>17}" for c in cells))
    print(
        "(pool GPUs x busy share: the rows' stage seconds over pool GPUs x makespan; the high-noise pool's\n"
        " without the boundary hits' waits; decode: the VAE's seconds, not the host's mp4 and score)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 32], help="fleet sizes (default 8 32)")
    parser.add_argument("--rows", type=int, default=1000, help="rows in each table (default 1000)")
    parser.add_argument(
        "--template-share",
        type=float,
        nargs="+",
        default=[0.0, 0.8],
        help="share of each table's rows that are template rows (default 0 0.8)",
    )
    parser.add_argument("--variants", type=int, default=VARIANTS, help="rows of one template group (default 20)")
    parser.add_argument(
        "--rate",
        type=float,
        default=WALL_ROWS_PER_SECOND,
        help="wall rows a second of the ideal fleet: sets each run's time scale (default %(default)s)",
    )
    parser.add_argument("--size", default="1280x720", help="WxH of every video (default 1280x720, 81 frames)")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="the simulated GPU (default h100)")
    args = parser.parse_args(argv)
    if any(not 0 <= s <= 1 for s in args.template_share):
        parser.error("--template-share: a share of the rows, 0 to 1")
    if min(args.gpus) < 2:
        parser.error("--gpus: each expert needs a GPU, so at least 2")
    width, height = (int(v) for v in args.size.split("x"))
    shape = Shape(width, height)
    base = model_settings()

    runs = []
    work = Path(tempfile.mkdtemp(prefix="batch-fleet-nodes", dir="/tmp"))
    try:
        with Nodes(max(args.gpus), work, serve=False):
            for gpus in args.gpus:
                for share in args.template_share:
                    runs.append(bench_table(base, gpus, share, args.rows, shape, args.gpu, args.rate, args.variants))
                    r = runs[-1]
                    log(
                        f"  {r['completed']} completed, {r['failed']} failed in {r['wall_s']:.0f} wall s: "
                        f"{r['rows_per_hour']:.1f} rows/h against {r['ideal_rows_per_hour']:.1f} ideal ({r['ratio']:.3f})"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_tables(runs, shape, args.gpu)
    result = {
        "benchmark": "batch_fleet",
        "simulated": True,
        "engine": "data",
        "gpu": args.gpu,
        "size": shape.size,
        "frames": shape.frames,
        "steps": shape.steps,
        "runs": runs,
        "no_failures": all(r["failed"] == 0 for r in runs),
    }
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
