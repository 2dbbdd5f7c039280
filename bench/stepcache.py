"""diffusers' step caches on both experts: speed-up against fidelity.

    python -m bench.stepcache [--prompts 4] [--preset final]

For each configuration (none, FirstBlockCache at two thresholds, TaylorSeer at two
intervals), the in-process pipeline generates the same prompts and seeds; the sides run
interleaved prompt by prompt. Reports the median seconds per video and the speed-up
against no cache, the PSNR of each video's frames against the uncached video (dB; inf:
identical), and the mean physics score. Prints a table, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np

from bench.toolkit import log, model_settings, rounded
from cluster.pipeline import Pipeline
from contract.request import GenerationRequest
from contract.settings import StepCacheSettings
from monitoring.physics import score_video
from stages.checkpoint import Checkpoint
from stages.decoder import to_uint8

CONFIGS = {
    "none": StepCacheSettings(),
    "first_block 0.05": StepCacheSettings(kind="first_block", options={"threshold": 0.05}),
    "first_block 0.2": StepCacheSettings(kind="first_block", options={"threshold": 0.2}),
    "taylorseer 2": StepCacheSettings(kind="taylorseer", options={"cache_interval": 2, "disable_cache_before_step": 2}),
    "taylorseer 4": StepCacheSettings(kind="taylorseer", options={"cache_interval": 4, "disable_cache_before_step": 2}),
}
PROMPTS = [
    "a red ball bouncing on a wooden floor",
    "一只橘猫在草地上奔跑",
    "a kite over the sea at dusk",
    "a paper boat drifting on a pond",
    "a cyclist crossing a bridge",
    "a lantern swinging in the wind",
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--preset", default="final")
    args = parser.parse_args(argv)

    base = model_settings()
    base = base.model_copy(update={"cache": base.cache.model_copy(update={"enabled": False})})
    pipelines = {
        name: Pipeline(Checkpoint(base.model, base.model_copy(update={"step_cache": config})))
        for name, config in CONFIGS.items()
    }
    requests = [
        GenerationRequest.build(base, prompt=p, seed=i, preset=args.preset)
        for i, p in enumerate(PROMPTS[: args.prompts])
    ]
    for pipeline in pipelines.values():  # warm-up
        pipeline.generate_frames(requests[0])

    seconds = {name: [] for name in CONFIGS}
    frames: dict[str, list[np.ndarray]] = {name: [] for name in CONFIGS}
    for request in requests:  # interleaved: machine noise hits every side alike
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            frames[name].append(to_uint8(pipeline.generate_frames(request)))
            seconds[name].append(time.perf_counter() - start)
        log(f"done: {request.prompt}")

    result: dict = {"benchmark": "stepcache", "preset": args.preset, "prompts": len(requests), "configs": {}}
    base_s = statistics.median(seconds["none"])
    for name in CONFIGS:
        quality = [psnr(f, ref) for f, ref in zip(frames[name], frames["none"], strict=False)]
        physics = [score_video(f, requests[0].fps)["score"] for f in frames[name]]
        result["configs"][name] = {
            "seconds": statistics.median(seconds[name]),
            "speedup": base_s / statistics.median(seconds[name]),
            "psnr_db": None if math.isinf(min(quality)) else min(quality),  # None: identical frames
            "physics": statistics.fmean(physics),
        }
    print(f"\nstep caches on both experts, {args.preset}, {len(requests)} prompts (in process)")
    print(f"{'config':<18}{'s/video':>9}{'speed-up':>10}{'PSNR dB (min)':>15}{'physics':>9}")
    for name, row in result["configs"].items():
        quality = "identical" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        print(f"{name:<18}{row['seconds']:>9.2f}{row['speedup']:>9.2f}x{quality:>15}{row['physics']:>9.3f}")
    print()
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
