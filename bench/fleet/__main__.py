"""Every fleet measurement in one run: the real cluster at 8 and 16 GPUs. SIMULATED GPUs.

    python -m bench.fleet [--gpus 8 16] [--size 1280x720] [--rate 3] [--window 48] [--output-uri s3://...]

The in-process measurements first (template cache, batching), in two processes of their own before
the nodes' processes share the cores; then, on one set of nodes sized for the largest fleet,
control-plane capacity, the fleets, the autoscaling ramp and the placements (a fleet measured above
stands for its placement run). With `--output-uri` the fleets keep job records and videos on that
store (e.g. an S3 bucket). Prints tables, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from bench.fleet import autoscaling, batching, control_plane, placements, saturation, template_cache
from bench.fleet.harness import Shape, add_common_arguments, finish, nodes_for, shape_of, timed
from bench.toolkit import model_settings
from contract.settings import Settings

GOALS = {**saturation.GOALS, "template": template_cache.GOAL, "control_plane": control_plane.GOAL}


def on_nodes(args: argparse.Namespace, base: Settings, shape: Shape) -> tuple:
    """The measurements that deploy the app, one after another on one set of nodes."""
    capacity, fleets, placed, ramp = None, [], [], None
    gpus = max(
        [*args.gpus, args.placement_gpus, args.ramp_gpus, control_plane.FLEET_GPUS if args.control_plane_jobs else 0]
    )
    if not gpus:
        return capacity, fleets, placed, ramp
    measure = {"rate": args.rate, "window": args.window}
    with nodes_for(gpus, args.gpus_per_node) as nodes:
        if args.control_plane_jobs:
            with timed("control-plane capacity"):
                capacity = control_plane.bench_control_plane(nodes, base, args.control_plane_jobs)
        with timed("fleets"):
            fleets = [
                saturation.bench_fleet(nodes, base, n, shape, args.gpu, args.output_uri, **measure) for n in args.gpus
            ]
        if args.ramp_gpus:
            with timed("autoscaling ramp"):
                phases = autoscaling.phases_of(args)
                ramp = autoscaling.bench_autoscale(nodes, base, args.ramp_gpus, shape, args.gpu, args.plot, phases)
        if args.placement_gpus:
            with timed("placements"):
                placed = placements.from_arguments(nodes, base, shape, args, fleets)
    return capacity, fleets, placed, ramp


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    saturation.add_arguments(parser)
    placements.add_arguments(parser)
    autoscaling.add_arguments(parser)
    batching.add_arguments(parser)
    control_plane.add_arguments(parser)
    args = parser.parse_args(argv)
    saturation.check_arguments(parser, args)
    shape = shape_of(args)
    base = model_settings()
    spawn = multiprocessing.get_context("spawn")

    # In-process measurements first, before the nodes' processes share the cores: two processes, each
    # batching run's off and on side by side (each process is mostly waiting on simulated GPUs).
    with timed("template cache and batching, in process"), ProcessPoolExecutor(2, mp_context=spawn) as pool:
        template_run = pool.submit(template_cache.bench_template, base, shape, args.gpu)
        batching_runs = [
            pool.submit(batching.bench_batching, base, s, c, b, args.gpu)
            for s, c, b in batching.runs(shape, args.batching_concurrency)
        ]
        template, batched = template_run.result(), [run.result() for run in batching_runs]
    with timed("on the nodes"):
        capacity, fleets, placed, ramp = on_nodes(args, base, shape)

    if fleets:
        saturation.print_table(fleets, shape, args.gpu)
    if placed:
        placements.print_table(placed, args.placement_gpus, shape)
    if ramp:
        autoscaling.print_report(ramp, shape)
    template_cache.print_line(template)
    if batched:
        batching.print_table(batched)
    if capacity:
        control_plane.print_report(capacity)
    return finish(
        "fleet",
        gpu=args.gpu,
        size=shape.size,
        frames=shape.frames,
        steps=shape.steps,
        fleets=fleets,
        placements=placed,
        autoscaling=ramp,
        template=template,
        batching=batched,
        control_plane=capacity,
        goals=GOALS,
        met={
            **saturation.met(fleets),
            "template": template["ratio"] <= GOALS["template"],
            "no_failures": all(f["failed"] == 0 for f in fleets + placed)
            and not (capacity or {}).get("failed")
            and not (ramp or {}).get("failed"),
            "scales_back": None if ramp is None else ramp["scaled_back_s"] is not None,
            "control_plane": None if capacity is None else capacity["jobs_per_second"] >= GOALS["control_plane"],
        },
    )


if __name__ == "__main__":
    main()
