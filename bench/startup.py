"""Start-up of `t2v serve` on the embedded default model, and where its seconds go.

Each run starts `t2v serve` in a Ray cluster of its own (bench/serve.py's start-up section) and
times it to the first GET /healthz 200 and to the first video; Serve's controller log then says
when each deployment's replica was up (constructor and first health check) after the app was
deployed. Goal: /healthz in <= 30 s, every run.

    python -m bench.startup [--runs 3]

Prints a table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.serve import GOALS, bench_startup
from bench.toolkit import log, model_settings, rounded


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="start-ups, one after another (default 3)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each (default 300)")
    args = parser.parse_args(argv)

    settings = model_settings()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="t2v-startup-") as work:
            out = bench_startup(settings, Path(work), "a red ball bouncing on the grass", args.timeout)
        log(f"run {i + 1}: /healthz after {out['healthz_s']:.1f} s, first video after {out['first_video_s']:.1f} s")
        runs.append(out)

    goal = GOALS["startup_s"]
    print(f"\n== `t2v serve` start-up on the default model, {args.runs} runs (goal: /healthz <= {goal} s every run)")
    print(f"{'run':>4} {'/healthz s':>11} {'first video s':>14} {'Ctrl-C s':>9} {'clean':>6}")
    for i, out in enumerate(runs, 1):
        print(
            f"{i:>4} {out['healthz_s']:>11.1f} {out['first_video_s']:>14.1f} {out['stop_s']:>9.1f} "
            f"{str(out['clean_exit']):>6}"
        )
    deployments = sorted({d for out in runs for d in out["replicas"]})
    print("\nreplica up after being scheduled (its constructor and first health check), median of the runs:")
    for deployment in deployments:
        seen = [out["replicas"][deployment] for out in runs if deployment in out["replicas"]]
        up = statistics.median(s["up_s"] for s in seen)
        own = statistics.median(s["constructor_s"] for s in seen)
        print(f"  {deployment:<16} {up:5.1f} s ({own:.1f} s its own)")
    worst = max(out["healthz_s"] for out in runs)
    result = {
        "benchmark": "startup",
        "runs": rounded(runs),
        "healthz_s": {"median": rounded(statistics.median(o["healthz_s"] for o in runs)), "max": rounded(worst)},
        "goals": {"startup_s": goal},
        "met": {"startup_s": worst <= goal and all(o["clean_exit"] for o in runs)},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
