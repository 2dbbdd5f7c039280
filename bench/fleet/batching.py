"""Batching in an expert replica under the cost model, off and on: throughput and p95 latency at
480p and `--size`, with 8 and 32 requests in flight, one replica per stage in this process (no
Ray). SIMULATED GPUs.

    python -m bench.fleet.batching [--batching-concurrency 8 32] [--size 1280x720] [--gpu h100]

Run alone, the runs go one after another; `python -m bench.fleet` runs them in two processes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.fleet.harness import LABEL, Shape, add_common_arguments, finish, shape_of, sim_settings
from bench.toolkit import model_settings
from contract.settings import Settings, SimSettings
from sim.cost_model import CostModel

AT_480P = Shape(832, 480)  # the size each batching run is also measured at


def bench_batching(base: Settings, shape: Shape, concurrency: int, batching: bool, gpu: str) -> dict:
    """One replica per stage in this process, `concurrency` requests at a time, experts batching
    (up to 8 requests a forward) or not: throughput and p95 latency in simulated seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from cluster.pipeline import Pipeline
    from contract.settings import BatchingSettings
    from stages.checkpoint import Checkpoint

    cost = CostModel(gpu)
    video_gpu_s = cost.video_seconds(shape.height, shape.width, shape.frames, shape.steps)
    time_scale = 0.5 / video_gpu_s  # a lone video: half a wall second, well above this process's CPU work per video
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


def runs(shape: Shape, concurrencies: list[int]) -> list[tuple[Shape, int, bool]]:
    """Every run's (size, requests in flight, batching), in the table's order."""
    return [(s, c, b) for s in (AT_480P, shape) for c in concurrencies for b in (False, True)]


def print_table(batching: list[dict]) -> None:
    print(f"\n== Batching in an expert replica, one replica per stage ({LABEL})")
    print(f"{'size':>9} {'in flight':>9} {'batching':>8} {'videos/h':>9} {'p95 s':>8}")
    for b in batching:
        print(
            f"{b['size']:>9} {b['concurrency']:>9} {'on' if b['batching'] else 'off':>8} "
            f"{b['videos_per_hour']:>9.2f} {b['p95_s']:>8.0f}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batching-concurrency", type=int, nargs="*", default=[8, 32], help="batching runs (default 8 32; none: skip)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, nodes=False, output=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    shape, base = shape_of(args), model_settings()
    batching = [bench_batching(base, s, c, b, args.gpu) for s, c, b in runs(shape, args.batching_concurrency)]
    if batching:
        print_table(batching)
    return finish("fleet.batching", gpu=args.gpu, batching=batching)


if __name__ == "__main__":
    main()
