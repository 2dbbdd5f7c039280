"""Batch runs: `ray job submit` of `cluster.batch` against a sequential in-process loop.

    python -m bench.batch_jobs [--rows 32] [--concurrency 8]

On the default model (or `T2V_MODEL`), in one run on one fresh local Ray cluster with the
Serve app deployed:

(a) free-form: N distinct preview prompts, videos per minute
    - in process: the stages one row after another in this process (`--engine local`'s
      code, no Ray): the baseline the goal is set against (>= 1.5x);
    - batch job, serve engine: `ray job submit -- python -m cluster.batch` through the
      running Serve app (the default), `--concurrency` rows in flight;
    - batch job, local engine: the same job with `--engine local`, which loads the model in
      the job's driver;
    - batch job, data engine: `--engine data`, Ray Data with one actor pool per stage, each
      loading its stage's model (what a job that brings its own model copies pays);
    each job both end to end (submit to exit) and inside the run (first row to last);
(b) template-heavy: N rows of 3 templates x N/3 slot variants through the batch job, with
    the latent cache (`cache: true`, the default) and without (`cache: false` on every
    row), videos per minute and the cache hits the manifest reports;
(c) headroom: one high-noise expert forward (with CFG) at the preview shape for 1, 2, 4
    and 8 requests stacked in one batch, milliseconds per request, in this process before
    Ray starts: whether batching rows together could buy throughput on this hardware.

Every row computes: distinct prompts and seeds, a cache directory of its own, and the
result cache never sees a repeat. Prints tables, then one JSON object as the last line.
The data engine on a simulated fleet of 8 and 32 GPUs, 1,000 rows: bench/batch_fleet.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.template_cache import VARIANTS
from bench.toolkit import BIN_DIR, cluster_run, log, model_settings, rounded
from cluster.launch import deploy, free_port, start_private_ray
from contract.settings import Settings

GOAL = 1.5  # batch job (serve engine) videos/min over the in-process loop
REPO = Path(__file__).resolve().parent.parent
SUBJECTS = [
    "a red ball",
    "a paper boat",
    "a kite",
    "a cyclist",
    "a fox",
    "a sailboat",
    "a dancer",
    "a train",
    "a hot-air balloon",
    "a waterfall",
    "a lantern",
    "a skateboarder",
    "a whale",
    "a windmill",
    "a drone",
    "a horse",
]
PLACES = [
    "on a beach",
    "in a snowy forest",
    "over a city at night",
    "in a desert",
    "on a lake at dawn",
    "in a neon alley",
]


def free_form(n: int, side: str) -> list[dict]:
    """Distinct prompts per side: no side finds another's embeddings or results in the cache."""
    return [
        {
            "id": f"free-{i:03d}",
            "prompt": f"{SUBJECTS[i % len(SUBJECTS)]} {PLACES[i // len(SUBJECTS) % len(PLACES)]}, {side} take {i}",
            "seed": 1000 + i,
            "preset": "preview",
        }
        for i in range(n)
    ]


def template_heavy(n: int, cache: bool) -> list[dict]:
    rows = []
    for i in range(n):
        name = list(VARIANTS)[i % len(VARIANTS)]
        slot, values = VARIANTS[name]
        rows.append(
            {
                "id": f"tpl-{i:03d}",
                "template": name,
                "slots": {slot: f"{values[i // len(VARIANTS) % len(values)]} #{i}"},
                "preset": "preview",
                "cache": cache,
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def in_process(settings: Settings, rows: list[dict], out: Path) -> dict:
    """The sequential loop: the local engine's code in this process (model loaded before timing)."""
    from cluster.batch import BatchRun, LocalEngine
    from cluster.prompt_table import read_table
    from contract.storage import OutputStore

    engine = LocalEngine(settings)
    table, _ = read_table(str(write_jsonl(rows, out.with_suffix(".jsonl"))))
    start = time.perf_counter()
    summary = asyncio.run(BatchRun(table, engine, OutputStore(str(out)), log=lambda _: None).run())
    seconds = time.perf_counter() - start
    return {"videos": summary["made"], "run_s": seconds, "vpm": summary["made"] / seconds * 60}


def batch_job(dashboard: str, rows: list[dict], out: Path, *options: str) -> dict:
    """One `ray job submit` of cluster.batch; end-to-end and in-run videos per minute."""
    source = write_jsonl(rows, out.with_suffix(".jsonl"))
    # The local engine's driver gets a cache of its own: nothing from earlier runs.
    env = {"env_vars": {"T2V_CACHE__DIRECTORY": str(out.with_name(out.name + "-cache"))}}
    command = [
        os.path.join(BIN_DIR, "ray"),
        "job",
        "submit",
        "--address",
        dashboard,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(env),
        "--",
        "python",
        "-m",
        "cluster.batch",
        "--input",
        str(source),
        "--output",
        str(out),
        *options,
    ]
    for _ in range(60):
        start = time.perf_counter()
        job = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if "No available agent" not in job.stderr:  # Ray's job agent starts a little after the cluster
            break
        time.sleep(2)
    if job.returncode != 0:
        raise RuntimeError(f"batch job failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}")
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    done = [m for m in manifest if m["status"] == "completed"]
    if len(done) != len(rows):
        raise RuntimeError(f"{len(rows) - len(done)} rows did not complete: {manifest}")
    # In the run: from the first row's start to the last row's end (manifest timestamps).
    first_start = min(m["finished_at"].timestamp() - m["seconds_total"] for m in done)
    last_end = max(m["finished_at"].timestamp() for m in done)
    hits: dict[str, int] = {}
    for m in done:
        for level in m["cache_hits"]:
            hits[level] = hits.get(level, 0) + 1
    match = re.search(r"this run: (\d+) videos made", job.stdout)
    return {
        "videos": int(match.group(1)) if match else len(done),
        "job_s": wall,
        "run_s": last_end - first_start,
        "vpm_job": len(done) / wall * 60,
        "vpm_run": len(done) / (last_end - first_start) * 60,
        "cache_hits": hits,
    }


def expert_batching(settings: Settings, sizes=(1, 2, 4, 8), repeats: int = 5) -> dict:
    """Milliseconds per request of one CFG expert step with `b` requests in one forward."""
    import torch

    from contract.experts import ExpertKind
    from stages.checkpoint import Checkpoint

    checkpoint = Checkpoint.from_settings(settings)
    transformer = checkpoint.expert(ExpertKind.HIGH_NOISE)
    preset = settings.presets["preview"]
    shape = checkpoint.latent_shape(preset.num_frames, preset.height, preset.width)
    text_dim = transformer.config.text_dim
    out = {}
    with torch.no_grad():
        for b in sizes:
            x = torch.randn(2 * b, *shape[1:])  # conditional + unconditional per request
            text = torch.randn(2 * b, checkpoint.max_sequence_length, text_dim)
            t = torch.full((2 * b,), 900)
            transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
            out[b] = (time.perf_counter() - start) / repeats / b * 1000
    return out


def print_tables(result: dict) -> None:
    a = result["free_form"]
    print(f"\n(a) {result['rows']} free-form preview prompts, videos per minute (2 cores)")
    print(f"{'side':<34}{'videos/min':>11}{'run s':>8}{'job s':>8}{'vs loop':>9}")
    base = a["in_process"]["vpm"]
    print(f"{'in-process sequential loop':<34}{base:>11.1f}{a['in_process']['run_s']:>8.1f}{'-':>8}{1.0:>8.2f}x")
    for name, label in (
        ("serve", f"batch job, serve engine (x{result['concurrency']})"),
        ("local", "batch job, local engine"),
        ("data", "batch job, data engine"),
    ):
        side = a[name]
        print(
            f"{label:<34}{side['vpm_run']:>11.1f}{side['run_s']:>8.1f}{side['job_s']:>8.1f}{side['vpm_run'] / base:>8.2f}x"
        )
        print(
            f"{'  end to end (submit to exit)':<34}{side['vpm_job']:>11.1f}{'':>8}{'':>8}{side['vpm_job'] / base:>8.2f}x"
        )
    b = result["template_heavy"]
    print(f"\n(b) {result['rows']} template rows (3 templates), batch job, serve engine")
    print(f"{'cache':<10}{'videos/min':>11}{'run s':>8}  cache hits")
    for name in ("off", "on"):
        side = b[name]
        print(f"{name:<10}{side['vpm_run']:>11.1f}{side['run_s']:>8.1f}  {side['cache_hits'] or '-'}")
    print(f"cache speed-up {b['speedup']:.2f}x")
    c = result["expert_batching_ms"]
    print("\n(c) high-noise expert step (CFG), preview shape, ms per request by batch size")
    print("  ".join(f"batch {k}: {v:.1f}" for k, v in c.items()))
    print(f"\ngoal (a) >= {GOAL}x: {'met' if result['met'] else 'not met'} ({result['ratio']:.2f}x)\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    work = Path(tempfile.mkdtemp(prefix="t2v-bb-"))
    ray_dir = f"/tmp/t2v-bb-{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes
    base = model_settings()
    settings = base.model_copy(
        update={
            "cache_dir": work / "cache",  # nothing cached from earlier runs
            "serving": base.serving.model_copy(
                update={"port": free_port(), "output_uri": str(work / "outputs"), "ray_temp_dir": ray_dir}
            ),
        }
    )
    result: dict = {"benchmark": "batch", "rows": args.rows, "concurrency": args.concurrency}
    result["expert_batching_ms"] = expert_batching(settings)
    with contextlib.redirect_stdout(sys.stderr), cluster_run(ray_dir, work):  # stdout: tables and JSON
        context = start_private_ray(ray_dir, 4, dashboard=True, log_to_driver=False)
        dashboard = f"http://{context.dashboard_url}"
        deploy(settings)
        log("deployed; (a) free-form")
        free = {
            "in_process": in_process(settings, free_form(args.rows, "loop"), work / "loop"),
            "serve": batch_job(
                dashboard, free_form(args.rows, "serve"), work / "serve", "--concurrency", str(args.concurrency)
            ),
            "local": batch_job(dashboard, free_form(args.rows, "local"), work / "local", "--engine", "local"),
            "data": batch_job(dashboard, free_form(args.rows, "data"), work / "data", "--engine", "data"),
        }
        log("(b) template-heavy")
        heavy = {
            "off": batch_job(
                dashboard,
                template_heavy(args.rows, cache=False),
                work / "tpl-off",
                "--concurrency",
                str(args.concurrency),
            ),
            "on": batch_job(
                dashboard,
                template_heavy(args.rows, cache=True),
                work / "tpl-on",
                "--concurrency",
                str(args.concurrency),
            ),
        }
        heavy["speedup"] = heavy["on"]["vpm_run"] / heavy["off"]["vpm_run"]
        result.update(free_form=free, template_heavy=heavy)
    result["ratio"] = result["free_form"]["serve"]["vpm_run"] / result["free_form"]["in_process"]["vpm"]
    result["goal"] = GOAL
    result["met"] = result["ratio"] >= GOAL
    print_tables(result)
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
