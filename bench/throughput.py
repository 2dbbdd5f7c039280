"""Cross-request batching in the experts, off vs on, through the Serve app.

    python -m bench.throughput [--levels 1 2 4 8] [--requests 8]

Three copies of the app run side by side on one local Ray cluster: `batching.enabled`
false (route /off), true (route /on, max batch 8, max wait 20 ms), and false with 3
expert replicas split by `cluster/sizing.py` for the preview step split (route /sized:
7 of 10 steps are high-noise, so 2 high-noise replicas to 1 low-noise). For each concurrency
level the same number of distinct preview requests (POST /v1/videos/sync, cache off) goes
to each: videos per minute and p50/p95 latency; at the top level also each expert pool's
busy fraction (from the jobs' stage traces: time each replica had work / replicas x wall).
Goal at concurrency 8: on >= 1.5x off, p95 no worse than 1.3x.

Prints a table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.toolkit import cluster_run, log, model_settings, percentile, rounded
from cluster.launch import free_port, start_private_ray
from cluster.sizing import expert_split
from contract.settings import BatchingSettings, Settings
from stages.checkpoint import Checkpoint
from stages.denoising import Scheduler

GOALS = {"throughput_ratio": 1.5, "p95_ratio": 1.3}


def busy(url: str, route: str, job_ids: list[str], replicas: dict[str, int], start: float, end: float) -> dict:
    """Per expert pool: time each replica had work (the union of its spans: a replica serves
    several requests at once) / (replicas x wall), from the jobs' stage traces."""
    spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for job_id in job_ids:
        for span in httpx.get(f"{url}{route}/v1/videos/{job_id}", timeout=60).json()["trace"]:
            if span["stage"] in replicas:
                spans.setdefault((span["stage"], span["replica"]), []).append(
                    (max(span["start"], start), min(span["end"], end))
                )
    worked = {stage: 0.0 for stage in replicas}
    for (stage, _), intervals in spans.items():
        reach = start
        for lo, hi in sorted(intervals):
            worked[stage] += max(0.0, hi - max(lo, reach))
            reach = max(reach, hi)
    return {stage: worked[stage] / (replicas[stage] * (end - start)) for stage in replicas}


def run_level(url: str, route: str, concurrency: int, n: int, tag: str, replicas: dict[str, int] | None = None) -> dict:
    def one(i: int) -> tuple[float, str]:
        body = {
            "prompt": f"a paper lantern drifting, {tag} {route} {i}",
            "seed": i,
            "preset": "preview",
            "cache": False,
        }
        start = time.perf_counter()
        response = httpx.post(f"{url}{route}/v1/videos/sync", json=body, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"{route}: {response.status_code} {response.text[:300]}")
        return time.perf_counter() - start, response.headers["x-video-id"]

    start, started = time.perf_counter(), time.time()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    row = {"vpm": n / wall * 60, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "wall": wall}
    if replicas:
        row["busy"] = busy(url, route, [r[1] for r in results], replicas, started, started + wall)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=8, help="requests per level and side (2x at the top level)")
    args = parser.parse_args(argv)

    from ray import serve

    from cluster.app import bind_app

    work = Path(tempfile.mkdtemp(prefix="t2v-bt-"))
    ray_dir = f"/tmp/t2v-bt-{os.getpid()}"
    base = model_settings()
    port = free_port()

    def side(name: str, **update) -> Settings:  # each app its own job records and cache
        serving = base.serving.model_copy(
            update={
                "port": port,
                "ray_temp_dir": ray_dir,
                "max_active_jobs": 64,
                "output_uri": str(work / name / "outputs"),
            }
        )
        return base.model_copy(update={"serving": serving, "cache_dir": work / name, **update})

    checkpoint = Checkpoint.from_settings(base)
    plan = Scheduler.from_checkpoint(checkpoint).plan(
        base.presets["preview"].num_inference_steps, checkpoint.boundary_ratio
    )
    split = expert_split(3, len(plan.high_noise_steps), len(plan.low_noise_steps))
    sized = {name: d.model_copy(update=split.as_settings().get(name, {})) for name, d in base.deployments.items()}
    sides = {
        "off": side("off"),
        "on": side("on", batching=BatchingSettings(enabled=True, max_batch_size=8, max_wait_ms=20)),
        "sized": side("sized", deployments=sized),
    }
    pools = {
        name: {
            "high_noise": s.deployments["HighNoiseExpert"].min_replicas,
            "low_noise": s.deployments["LowNoiseExpert"].min_replicas,
        }
        for name, s in sides.items()
    }
    result: dict = {"benchmark": "throughput", "levels": {}}
    with contextlib.redirect_stdout(sys.stderr), cluster_run(ray_dir, work):
        # 8 logical CPUs: three apps' fractional reservations fit; the work shares 2 cores.
        start_private_ray(ray_dir, 8, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for name, settings in sides.items():
            serve.run(bind_app(settings), name=f"t2v-{name}", route_prefix=f"/{name}")
        url = f"http://127.0.0.1:{port}"
        for name in sides:  # warm-up: first calls allocate and open connections
            run_level(url, f"/{name}", 1, 1, "warm")
        for level in args.levels:
            n = args.requests * (2 if level == max(args.levels) else 1)
            at_top = level == max(args.levels)
            row = {
                name: run_level(url, f"/{name}", level, n, f"c{level}", pools[name] if at_top else None)
                for name in sides
            }
            row["throughput_ratio"] = row["on"]["vpm"] / row["off"]["vpm"]
            row["p95_ratio"] = row["on"]["p95"] / row["off"]["p95"]
            result["levels"][level] = row
            log(f"concurrency {level}: {row['throughput_ratio']:.2f}x")
    top = result["levels"][max(args.levels)]
    result["goals"] = GOALS
    result["met"] = {
        "throughput_ratio": top["throughput_ratio"] >= GOALS["throughput_ratio"],
        "p95_ratio": top["p95_ratio"] <= GOALS["p95_ratio"],
    }

    print(f"\nbatching off vs on (max batch 8, max wait 20 ms), preview, {args.requests} requests a level")
    print(
        f"{'concurrency':>11}{'off vpm':>9}{'on vpm':>8}{'ratio':>7}{'off p50':>9}{'on p50':>8}{'off p95':>9}{'on p95':>8}"
        f"{'p95 ratio':>10}"
    )
    for level, row in result["levels"].items():
        print(
            f"{level:>11}{row['off']['vpm']:>9.1f}{row['on']['vpm']:>8.1f}{row['throughput_ratio']:>6.2f}x"
            f"{row['off']['p50']:>9.2f}{row['on']['p50']:>8.2f}{row['off']['p95']:>9.2f}{row['on']['p95']:>8.2f}"
            f"{row['p95_ratio']:>9.2f}x"
        )
    print(
        f"goals at concurrency {max(args.levels)}: throughput >= {GOALS['throughput_ratio']}x "
        f"({'met' if result['met']['throughput_ratio'] else 'not met'}), p95 <= {GOALS['p95_ratio']}x "
        f"({'met' if result['met']['p95_ratio'] else 'not met'})"
    )
    print(
        f"\nexpert pools at concurrency {max(args.levels)}: busy fraction (time each replica had work / replicas x wall)"
    )
    print(f"{'side':<8}{'replicas':>10}{'high-noise':>12}{'low-noise':>11}{'videos/min':>12}")
    for name in sides:
        r = top[name]
        print(
            f"{name:<8}{pools[name]['high_noise']:>5} : {pools[name]['low_noise']:<3}{r['busy']['high_noise']:>11.0%}"
            f"{r['busy']['low_noise']:>11.0%}{r['vpm']:>12.1f}"
        )
    print()
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
