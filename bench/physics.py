"""Time per clip and separation of the physics-plausibility scorer on its synthetic suite.

Scores every `bench.synthetic_clips.synthetic_clip` kind (33 frames of 128x128 at 16 fps by default), times
`score_video` on each (median of repeats after one warm-up), and reports the separation: the lowest
plausible score minus the highest violation score (the static clip is neither). The goal is under
500 ms per clip; the load average is printed too, since other jobs may share the machine.

    python -m bench.physics [--repeats 5] [--frames 33] [--size 128] [--fps 16] [--threads N]

Prints a table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import cv2

from bench.synthetic_clips import KINDS, PLAUSIBLE, VIOLATIONS, synthetic_clip
from monitoring.physics import SUBSCORES, score_video

GOAL_MS = 500
SHORT = {
    "temporal_consistency": "warp",
    "flicker": "flicker",
    "motion_smoothness": "smooth",
    "object_continuity": "contin",
    "gravity": "gravity",
    "energy_conservation": "energy",
    "mass_conservation": "mass",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_clip(kind: str, args: argparse.Namespace) -> dict:
    clip = synthetic_clip(kind, frames=args.frames, size=args.size, fps=args.fps)
    result = score_video(clip, args.fps)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        score_video(clip, args.fps)
        times.append((time.perf_counter() - start) * 1000)
    ms = statistics.median(times)
    log(f"{kind}: score {result['score']:.3f}, {ms:.0f} ms (min {min(times):.0f}, max {max(times):.0f})")
    return {"score": result["score"], "subscores": result["subscores"], "ms": round(ms, 1)}


def role(kind: str) -> str:
    return "plausible" if kind in PLAUSIBLE else "violation" if kind in VIOLATIONS else "-"


def print_table(rows: dict[str, dict]) -> None:
    columns = [SHORT[s] for s in SUBSCORES]
    print(f"{'clip':<17}{'role':<10}{'score':>7}" + "".join(f"{c:>9}" for c in columns) + f"{'ms':>8}")
    for kind, row in rows.items():
        cells = "".join("        -" if v is None else f"{v:>9.3f}" for v in row["subscores"].values())
        print(f"{kind:<17}{role(kind):<10}{row['score']:>7.3f}{cells}{row['ms']:>8.1f}")
    print("(ms = median wall time of score_video; '-' = subscore does not apply, see its note)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per clip (default 5)")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--threads", type=int, help="cv2.setNumThreads (default: OpenCV's own)")
    args = parser.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)
    load = os.getloadavg()[0]
    log(
        f"{args.frames} frames of {args.size}x{args.size}, {cv2.getNumThreads()} OpenCV threads, "
        f"{os.cpu_count()} cores, load average {load:.2f}"
    )

    rows = {kind: bench_clip(kind, args) for kind in KINDS}
    print_table(rows)
    scores = {kind: row["score"] for kind, row in rows.items()}
    worst_plausible = min(scores[k] for k in PLAUSIBLE)
    best_violation = max(scores[k] for k in VIOLATIONS)
    separation = round(worst_plausible - best_violation, 4)
    print(f"separation: min plausible {worst_plausible:.3f} - max violation {best_violation:.3f} = {separation:.3f}")

    per_clip = [row["ms"] for row in rows.values()]
    summary = {
        "benchmark": "physics",
        "frames": args.frames,
        "size": args.size,
        "fps": args.fps,
        "repeats": args.repeats,
        "threads": cv2.getNumThreads(),
        "load_average": round(load, 2),
        "ms_per_clip_median": round(statistics.median(per_clip), 1),
        "ms_per_clip_max": round(max(per_clip), 1),
        "goal_ms": GOAL_MS,
        "met": max(per_clip) <= GOAL_MS,
        "separation": separation,
        "scores": scores,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
