"""The physics-plausibility scorer: separation on its synthetic suite and on real footage, camera pans, still
video and repair, and time per clip.

    python -m bench.physics [--repeats 3] [--threads N] [--speed-only]

1. Synthetic suite (`bench.synthetic_clips`, 33 frames of 128x128 at 16 fps): every kind's
   score and subscores, the AUC plausible vs violated, and each plausible scene filmed by a panning
   camera against the still camera.
2. Real footage (`bench.footage`: clips of bench/footage/ cut into 33-frame windows, each as it
   is and with each visible violation applied): the AUC plausible vs violated on the clips the
   scorer was tuned on and, separately, on the held-out ones, per violation; windows where nothing
   moves (the scorer's "no evidence", 0.5) are counted but left out of the AUC. Each whole clip's
   score against the median violation score. Pans: each moving window seen through a still crop
   and through the same crop swept across it. Time's arrow: on clips where something falls, is
   thrown or bounces, how many windows score lower played backwards.
3. Repair: for each real window that moves, its first frame held still as a "re-sample" - how often
   it would win on score alone, and how often it wins under the dynamics rule (`best_attempt`).
4. Time per clip at 128x128x33 and at 480x270x81 (median of repeats after one warm-up).

Prints tables, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np

from bench.footage import FALLING, FOLDER, HELD_OUT, TUNING, auc, crops, read_video, samples
from bench.footage import VIOLATIONS as FOOTAGE_VIOLATIONS
from bench.synthetic_clips import KINDS, PLAUSIBLE, VIOLATIONS, synthetic_clip
from contract.messages import PhysicsResult
from monitoring.physics import NO_EVIDENCE, SUBSCORES, score_video
from stages.stage_list import best_attempt

GOALS = {
    "auc_synthetic": 0.98,
    "caught_mean": 0.6,  # mass change and energy gain, each: the synthetic clips' mean score at most this
    "auc_held_out": 0.95,
    "auc_held_out_kind": 0.9,  # stutter, vanish and jump cut, each
    "auc_held_out_reverse": 0.8,
    "pan_difference": 0.05,  # synthetic
    "pan_difference_footage": 0.10,
    "ms_128x128x33": 250,
    "ms_480x270x81": 600,
}
CAUGHT = {"mass_change": ("mass_change", "size_change"), "energy_gain": ("energy_gain",)}
KEY_KINDS = ("stutter", "vanish", "jump_cut")
SHORT = {
    "temporal_consistency": "warp",
    "frame_continuity": "breaks",
    "flicker": "flicker",
    "motion_smoothness": "smooth",
    "object_continuity": "contin",
    "gravity": "gravity",
    "energy_conservation": "energy",
    "mass_conservation": "mass",
    "arrow_of_time": "arrow",
}
PANS = (0.25, -0.15)  # frame widths per second, right and left
MIN_DYNAMICS = 0.8  # the repair rule's default (Settings.repair_min_dynamics)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(frames: np.ndarray, fps: float, repeats: int) -> tuple[dict, float]:
    result = score_video(frames, fps)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_video(frames, fps)
        times.append((time.perf_counter() - start) * 1000)
    return result, statistics.median(times)


def role(kind: str) -> str:
    return "plausible" if kind in PLAUSIBLE else "violation" if kind in VIOLATIONS else "-"


def synthetic(repeats: int) -> dict:
    rows = {}
    for kind in KINDS:
        result, ms = timed(synthetic_clip(kind), 16, repeats)
        rows[kind] = {"score": result["score"], "subscores": result["subscores"], "ms": ms}
        log(f"{kind}: {result['score']:.3f}, {ms:.0f} ms")
    print(
        f"{'synthetic clip':<17}{'role':<10}{'score':>7}" + "".join(f"{SHORT[s]:>8}" for s in SUBSCORES) + f"{'ms':>7}"
    )
    for kind, row in rows.items():
        cells = "".join("       -" if v is None else f"{v:>8.3f}" for v in row["subscores"].values())
        print(f"{kind:<17}{role(kind):<10}{row['score']:>7.3f}{cells}{row['ms']:>7.0f}")
    pans = {}
    for kind in PLAUSIBLE:
        panned = [score_video(synthetic_clip(kind, pan=pan), 16)["score"] for pan in PANS]
        pans[kind] = round(max(abs(p - rows[kind]["score"]) for p in panned), 4)
    print("camera pan (0.25 and -0.15 frame widths/s) vs still camera, largest difference:", pans)
    scores = [rows[k]["score"] for k in PLAUSIBLE], [rows[k]["score"] for k in VIOLATIONS]
    caught = {name: round(float(np.mean([rows[k]["score"] for k in kinds])), 4) for name, kinds in CAUGHT.items()}
    print("mean score of the mass-change and energy-gain clips:", caught)
    return {
        "auc": round(auc(*scores), 4),
        "caught_mean": caught,
        "separation": round(min(scores[0]) - max(scores[1]), 4),
        "pan_difference_max": max(pans.values()),
        "ms_median": round(statistics.median(r["ms"] for r in rows.values()), 1),
        "scores": {k: r["score"] for k, r in rows.items()},
    }


def footage() -> dict:
    rows, plain = [], []
    for sample in samples():
        result = score_video(sample.frames, sample.fps)
        if sample.violation is None:
            plain.append(sample)
        rows.append(
            {
                "clip": sample.clip,
                "start": sample.start,
                "violation": sample.violation,
                "score": result["score"],
                "evidence": result["evidence"],
                "dynamics": result["dynamics"],
                "first_frame": sample.frames[:1],
                "fps": sample.fps,
            }
        )
        log(f"{sample.name}: {result['score']:.3f} ({result['evidence']})")
    moving = [r for r in rows if not (r["violation"] is None and r["evidence"] == "none")]
    still = len(rows) - len(moving)

    def split_auc(clips, kind=None) -> tuple[float, int, int]:
        plausible = [r["score"] for r in moving if r["clip"] in clips and r["violation"] is None]
        violated = [
            r["score"] for r in moving if r["clip"] in clips and r["violation"] and kind in (None, r["violation"])
        ]
        return auc(plausible, violated), len(plausible), len(violated)

    print(
        f"\n{'real footage':<14}{'windows':>9}{'violated':>10}{'AUC':>7}   "
        + "".join(f"{k:>9}" for k in FOOTAGE_VIOLATIONS)
    )
    result = {}
    for name, clips in (("tuning", TUNING), ("held out", HELD_OUT)):
        value, p, v = split_auc(clips)
        per = {k: split_auc(clips, k)[0] for k in FOOTAGE_VIOLATIONS}
        print(f"{name:<14}{p:>9}{v:>10}{value:>7.3f}   " + "".join(f"{x:>9.3f}" for x in per.values()))
        result[name.replace(" ", "_")] = {"auc": round(value, 4), "plausible": p, "violated": v} | {
            k: round(x, 4) for k, x in per.items()
        }
    print(f"({still} still windows left out: the scorer gives them {NO_EVIDENCE}, 'not enough evidence')")

    pans = {"tuning": [], "held_out": []}
    for sample in plain:
        fixed, panned = crops(sample.frames)
        a, b = score_video(fixed, sample.fps), score_video(panned, sample.fps)
        if a["evidence"] != "none":
            pans["tuning" if sample.clip in TUNING else "held_out"].append(abs(a["score"] - b["score"]))
    pan = {k: round(max(v, default=0.0), 4) for k, v in pans.items()}
    print(f"a crop panned across each moving window vs the same crop held still, largest difference: {pan}")
    backwards = [
        (r["clip"], r["score"] < o["score"])
        for r in rows
        if r["violation"] == "reverse" and r["clip"] in FALLING
        for o in rows
        if o["violation"] is None and o["clip"] == r["clip"] and o["start"] == r["start"]
    ]
    print(
        f"played backwards, lower than forwards: {sum(b for _, b in backwards)} of {len(backwards)} windows "
        f"of clips where something falls, is thrown or bounces ({', '.join(FALLING)})"
    )

    violation_median = float(np.median([r["score"] for r in rows if r["violation"]]))
    whole = {}
    for name in TUNING + HELD_OUT:
        frames, fps = read_video(FOLDER / f"{name}.mp4")
        whole[name] = score_video(frames, fps)["score"]
    print(f"whole clips against the median violation ({violation_median:.3f}):", whole)

    # A still "re-sample" (the window's first frame held) against the window as first attempt
    wins_by_score = wins_by_rule = 0
    firsts = [r for r in moving if r["violation"] is None]
    for r in firsts:
        frozen = np.repeat(r["first_frame"], 33, axis=0)
        held = score_video(frozen, r["fps"])
        attempts = [PhysicsResult(score=r["score"], dynamics=r["dynamics"]), PhysicsResult.of(held)]
        wins_by_score += held["score"] > r["score"]
        wins_by_rule += best_attempt(attempts, MIN_DYNAMICS) == 1
    print(
        f"repair: a still re-sample beats the moving first attempt on score in {wins_by_score} of {len(firsts)} "
        f"windows, under the dynamics rule in {wins_by_rule}"
    )
    return result | {
        "pan_difference": pan,
        "backwards_lower": sum(b for _, b in backwards),
        "backwards_windows": len(backwards),
        "still_windows": still,
        "violation_median": round(violation_median, 4),
        "whole_clips": whole,
        "whole_clips_above_median_violation": all(s > violation_median for s in whole.values()),
        "still_wins_by_score": wins_by_score,
        "still_wins_under_rule": wins_by_rule,
        "repair_windows": len(firsts),
    }


def speed(repeats: int) -> dict:
    small = synthetic_clip("bounce")
    frames, fps = read_video(FOLDER / "juggle_lawn.mp4")
    large = np.stack([cv2.resize(f, (480, 270), interpolation=cv2.INTER_AREA) for f in frames[:81]])
    out = {}
    for name, clip, rate in (("128x128x33", small, 16.0), ("480x270x81", large, fps)):
        out[f"ms_{name}"] = round(timed(clip, rate, repeats)[1], 1)
    print(f"\ntime per clip: {out} (goals: {GOALS['ms_128x128x33']} and {GOALS['ms_480x270x81']} ms)")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per clip (default 3)")
    parser.add_argument("--threads", type=int, help="cv2.setNumThreads (default: OpenCV's own)")
    parser.add_argument("--speed-only", action="store_true", help="time per clip only (section 4)")
    args = parser.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)
    load = os.getloadavg()[0]
    log(f"{cv2.getNumThreads()} OpenCV threads, {os.cpu_count()} cores, load average {load:.2f}")
    summary = {"benchmark": "physics", "threads": cv2.getNumThreads(), "load_average": round(load, 2)}
    if args.speed_only:
        summary.update(speed(args.repeats))
        print(json.dumps(summary), flush=True)
        return summary
    summary["synthetic"] = synthetic(args.repeats)
    summary["footage"] = footage()
    summary.update(speed(args.repeats))
    summary["goals"] = GOALS
    held = summary["footage"]["held_out"]
    summary["met"] = {
        "auc_synthetic": summary["synthetic"]["auc"] >= GOALS["auc_synthetic"],
        "caught": all(v <= GOALS["caught_mean"] for v in summary["synthetic"]["caught_mean"].values()),
        "auc_held_out": held["auc"] >= GOALS["auc_held_out"],
        "auc_held_out_kinds": all(held[k] >= GOALS["auc_held_out_kind"] for k in KEY_KINDS),
        "auc_held_out_reverse": held["reverse"] >= GOALS["auc_held_out_reverse"],
        "backwards_lower": summary["footage"]["backwards_lower"] == summary["footage"]["backwards_windows"],
        "whole_clips_above_median_violation": summary["footage"]["whole_clips_above_median_violation"],
        "pan": summary["synthetic"]["pan_difference_max"] <= GOALS["pan_difference"]
        and max(summary["footage"]["pan_difference"].values()) <= GOALS["pan_difference_footage"],
        "still_never_wins": summary["footage"]["still_wins_under_rule"] == 0,
        "speed": summary["ms_128x128x33"] <= GOALS["ms_128x128x33"]
        and summary["ms_480x270x81"] <= GOALS["ms_480x270x81"],
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
