"""Overhead of the staged pipeline against diffusers' `WanPipeline`, per stage and preset.

Both run the same model (the embedded default, or `T2V_MODEL`), prompt, seed and
resolved preset settings in one process. The staged `Pipeline` is timed end to end and
split into encode / high_noise / low_noise / decode / mp4; `WanPipeline.__call__` makes
frames only, so it is compared with the staged time without mp4. Medians over repeats.

    python -m bench.stage_split [--repeats 3] [--threads N]

Prints a table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
from diffusers import WanPipeline

from cluster.pipeline import Pipeline, wan_pipeline_arguments
from contract.request import GenerationRequest
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.decoder import to_uint8

PRESETS = ("preview", "final")
STAGES = ("encode", "high_noise", "low_noise", "decode", "mp4")
FRAME_STAGES = STAGES[:-1]
GOAL = 1.05  # staged may cost at most 5% more than diffusers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_staged(pipeline: Pipeline, request: GenerationRequest) -> tuple[dict[str, float], np.ndarray]:
    start = time.perf_counter()
    result = pipeline(request)
    wall = time.perf_counter() - start
    times = dict(result.timings)
    times["staged_s"] = sum(times[s] for s in FRAME_STAGES)
    times["staged_mp4_s"] = wall
    return times, result.frames


def run_diffusers(pipe: WanPipeline, request: GenerationRequest, checkpoint: Checkpoint) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    frames = pipe(**wan_pipeline_arguments(request, checkpoint)).frames[0]
    return time.perf_counter() - start, frames


def bench_preset(pipeline: Pipeline, pipe: WanPipeline, request: GenerationRequest, repeats: int) -> dict:
    # The warm-up also checks both sides make the same video: otherwise the timings compare different work.
    _, staged_frames = run_staged(pipeline, request)
    _, reference = run_diffusers(pipe, request, pipeline.checkpoint)
    max_diff = int(abs(staged_frames.astype(int) - to_uint8(reference).astype(int)).max())
    if max_diff:
        log(f"warning: {request.preset}: staged and diffusers frames differ by up to {max_diff}/255")

    staged, diffusers = [], []
    for i in range(repeats):
        # Alternate who goes first so drift on a noisy machine hits both sides alike.
        for side in ("staged", "diffusers") if i % 2 == 0 else ("diffusers", "staged"):
            if side == "staged":
                staged.append(run_staged(pipeline, request)[0])
            else:
                diffusers.append(run_diffusers(pipe, request, pipeline.checkpoint)[0])
        log(
            f"{request.preset}: repeat {i + 1}/{repeats}: staged {staged[-1]['staged_s']:.3f}s, diffusers {diffusers[-1]:.3f}s"
        )

    out = {key: statistics.median(run[key] for run in staged) for key in (*STAGES, "staged_s", "staged_mp4_s")}
    out["diffusers_s"] = statistics.median(diffusers)
    out["ratio"] = out["staged_s"] / out["diffusers_s"]
    out = {k: round(v, 4) for k, v in out.items()}
    out["max_frame_diff"] = max_diff
    return out


def print_table(results: dict[str, dict]) -> None:
    columns = (*STAGES, "staged_s", "staged_mp4_s", "diffusers_s", "ratio")
    print(f"{'preset':<8}" + "".join(f"{c:>13}" for c in columns))
    for preset, row in results.items():
        print(f"{preset:<8}" + "".join(f"{row[c]:>13.4f}" for c in columns))
    print("(median seconds; staged_s = encode..decode, without mp4; ratio = staged_s / diffusers_s)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side and preset (default 3)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--prompt", default="a red ball bouncing on a beach, cinematic")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = Settings()
    checkpoint = Checkpoint.from_settings(settings)
    log(f"model {checkpoint.model_id} at {checkpoint.path}, {torch.get_num_threads()} torch threads")
    pipeline = Pipeline(checkpoint)
    # The same dtypes as our stages, the VAE's included (settings.vae_dtype), so both do the same work.
    dtypes = {"default": checkpoint.dtype, "vae": checkpoint.vae_dtype}
    pipe = WanPipeline.from_pretrained(checkpoint.path, dtype=dtypes).to(checkpoint.device)
    pipe.set_progress_bar_config(disable=True)

    results = {}
    for preset in PRESETS:
        request = GenerationRequest.build(settings, prompt=args.prompt, seed=args.seed, preset=preset)
        results[preset] = bench_preset(pipeline, pipe, request, args.repeats)

    print_table(results)
    overhead = max(r["ratio"] for r in results.values())
    summary = {
        "benchmark": "stages",
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        **results,
        "overhead_ratio": overhead,
        "goal": GOAL,
        "met": overhead <= GOAL,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
