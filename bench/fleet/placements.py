"""Disaggregated against co-located experts: videos per hour per GPU of one fleet size on each GPU
type, the experts split between GPUs as `t2v plan` says, or every GPU running both (swapping them
where it cannot hold the two). Then, on the GPUs of `--fp8-types`, both experts co-located in FP8
(`quantization`): at one byte a weight an L40S-48GB holds the two without swapping. SIMULATED GPUs.

    python -m bench.fleet.placements [--placement-gpus 8] [--placement-types h100 l40s] [--fp8-types l40s]

Each placement is a fleet measured as in bench/fleet/saturation.py (throughput at saturation, a
lone request's latency), with `alone=2`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.fleet.harness import LABEL, Nodes, Shape, add_common_arguments, finish, nodes_for, shape_of
from bench.fleet.saturation import add_measure_arguments, bench_fleet, check_arguments
from bench.toolkit import model_settings
from contract.settings import Settings
from sim.cost_model import GPUS

PLACEMENTS = ("disaggregated", "co_located")


def bench_placements(
    nodes: Nodes,
    base: Settings,
    gpus: int,
    shape: Shape,
    gpu_types: list[str],
    output_uri: str | None = None,
    measured: Sequence[dict] = (),
    fp8_types: Sequence[str] = (),
    **measure,
) -> list[dict]:
    """Each placement on each GPU type, then co-located FP8 experts on each of `fp8_types`; a fleet
    already `measured` stands for its own placement run."""
    runs = [(gpu, placement, "none") for gpu in gpu_types for placement in PLACEMENTS]
    runs += [(gpu, "co_located", "fp8") for gpu in fp8_types]
    placements = []
    for gpu, placement, quantization in runs:
        key = (gpus, gpu, placement, quantization)
        done = next((f for f in measured if (f["gpus"], f["gpu"], f["placement"], f["quantization"]) == key), None)
        placements.append(
            done
            or bench_fleet(
                nodes, base, gpus, shape, gpu, output_uri, placement, alone=2, quantization=quantization, **measure
            )
        )
    return placements


def from_arguments(nodes: Nodes, base: Settings, shape: Shape, args, measured: Sequence[dict] = ()) -> list[dict]:
    """`bench_placements` as the command line (`add_arguments`, and the fleet's measure arguments) asks."""
    return bench_placements(
        nodes,
        base,
        args.placement_gpus,
        shape,
        args.placement_types,
        args.output_uri,
        measured,
        args.fp8_types,
        rate=args.rate,
        window=args.window,
    )


def print_table(placements: list[dict], gpus: int, shape: Shape) -> None:
    print(f"\n== Disaggregated vs co-located experts, {gpus} GPUs, {shape.size} ({LABEL})")
    print(
        f"{'GPU':>5} {'placement':>13} {'weights':>8} {'layout':>11} {'videos/h':>9} {'per GPU/h':>9} {'bound/h':>8} "
        f"{'p50 alone s':>11}"
    )
    for f in placements:
        layout = "both/GPU" if f["split"] is None else f"{f['split'][0]}:{f['split'][1]}"
        weights = "bf16" if f["quantization"] == "none" else f["quantization"]
        print(
            f"{f['gpu']:>5} {f['placement']:>13} {weights:>8} {layout:>11} {f['videos_per_hour']:>9.1f} "
            f"{f['videos_per_hour_per_gpu']:>9.2f} {f['split_bound_per_hour']:>8.1f} {f['low_load_p50_s']:>11.1f}"
        )
    print("(bound: what the layout allows - the split, or each GPU's swaps; p50 alone: one request at a time)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--placement-gpus",
        type=int,
        default=8,
        help="disaggregated vs co-located on H100 and L40S (default 8; 0: skip)",
    )
    parser.add_argument(
        "--placement-types", nargs="+", default=["h100", "l40s"], choices=sorted(GPUS), help="GPUs to compare on"
    )
    fp8 = sorted(name for name, gpu in GPUS.items() if gpu.fp8)
    parser.add_argument(
        "--fp8-types", nargs="*", default=["l40s"], choices=fp8, help="GPUs to run co-located FP8 experts on"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, gpu=False)
    add_measure_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    shape, base = shape_of(args), model_settings()
    placements = []
    if args.placement_gpus:
        with nodes_for(args.placement_gpus, args.gpus_per_node) as nodes:
            placements = from_arguments(nodes, base, shape, args)
        print_table(placements, args.placement_gpus, shape)
    return finish("fleet.placements", size=shape.size, placements=placements)


if __name__ == "__main__":
    main()
