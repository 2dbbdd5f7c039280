"""The simulated fleet (bench/fleet/) end to end on a small fleet: a multi-node Ray cluster with
logical GPUs, the real app in `device: sim`, requests over HTTP, job records and videos on an
S3-compatible object store (the `s3_uri` fixture's server). Run as a subprocess: this test
session's own Ray is started in-process elsewhere, and one process drives one Ray cluster."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.process_group import run_group

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_simulated_fleet_serves_every_request_and_says_it_is_simulated(s3_uri, tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # 4 logical GPUs on 2 worker nodes (and a GPU-less head)
    command = [sys.executable, "-m", "bench.fleet", "--gpus", "4", "--gpus-per-node", "2", "--window", "16"]
    command += ["--size", "256x256"]
    command += ["--batching-concurrency", "4", "--control-plane-jobs", "40", "--output-uri", s3_uri("fleet")]
    # the fleet on L40S stands for its own disaggregated placement run: one deployment fewer
    command += ["--gpu", "l40s", "--placement-gpus", "4", "--placement-types", "l40s"]
    plot = tmp_path / "ramp.png"
    command += ["--ramp-gpus", "4", "--ramp-peak", "4", "--ramp-seconds", "10", "30", "30", "--plot", str(plot)]
    # a hang guard, not a speed check (337-479 s here): on a hang, the run's log (stderr) names the
    # measurement it was in
    run = run_group(command, timeout=900, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "SIMULATED GPUs" in run.stdout
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["simulated"] is True and result["met"]["no_failures"], result
    (fleet,) = result["fleets"]
    assert fleet["nodes"] == 2 and fleet["steps"] == [26, 14]  # Wan2.2's schedule
    assert fleet["split"] == [2, 2]  # as `t2v plan --gpus 4` splits them
    # simulated GPUs compute one thing at a time: the fleet cannot beat the split's bound (a GPU
    # running its two requests at once would double it; 16 completions read it to +-10 %)
    assert fleet["videos_per_hour"] <= 1.1 * fleet["split_bound_per_hour"], fleet
    # every request's record and video went to the object store (3 alone; 2 x 8 in flight + a window of 16)
    assert fleet["stored"]["records"] == fleet["stored"]["videos"] == 3 + 32, fleet["stored"]
    assert 0 < result["template"]["ratio"] < 1  # variants of a template share the high-noise phase
    runs = {(b["size"], b["batching"]) for b in result["batching"]}
    assert runs == {(size, on) for size in ("832x480", "256x256") for on in (False, True)}
    assert all(b["videos_per_hour"] > 0 and b["p95_s"] > 0 for b in result["batching"])
    capacity = result["control_plane"]
    assert capacity["failed"] == 0 and capacity["jobs_per_second"] > 0
    # create, the stages' words (the first marks it in progress), the end: 4 on the hot path; a phase
    # that ran past the progress interval under this load adds one word of progress
    calls = capacity["job_store_calls_per_job"]
    assert calls["mean"] <= 4.1 and calls["max"] <= 5, calls
    assert {"Ingress", "JobStore", "Decoder"} <= set(capacity["cpu_seconds_per_job"])  # CPU by process
    assert capacity["control_plane_only_jobs_per_second"] > capacity["ceiling_jobs_per_second"]

    # disaggregated against co-located on L40S-48GB, which cannot hold both experts: the GPUs
    # running both swap them, so a lone video takes longer than on GPUs of their own; in FP8 (one
    # byte a weight) it holds the two, and the swaps are gone
    placements = {(f["placement"], f["quantization"]): f for f in result["placements"]}
    assert set(placements) == {("disaggregated", "none"), ("co_located", "none"), ("co_located", "fp8")}
    assert placements["co_located", "none"]["split"] is None
    assert all(
        f["gpu"] == "l40s" and f["failed"] == 0 and f["videos_per_hour_per_gpu"] > 0 for f in result["placements"]
    )
    bf16, fp8 = placements["co_located", "none"], placements["co_located", "fp8"]
    assert bf16["pure_compute_s"] > placements["disaggregated", "none"]["pure_compute_s"]  # the swaps
    assert fp8["pure_compute_s"] < bf16["pure_compute_s"] and fp8["split_bound_per_hour"] > bf16["split_bound_per_hour"]
    # the autoscaling ramp: experts scale up from one replica under the load step, back after it,
    # and no request fails on the way
    ramp = result["autoscaling"]
    assert ramp["failed"] == 0 and ramp["requests"] > 0, ramp
    assert ramp["peak_replicas"][0] > 1 and ramp["added_capacity_s"] is not None, ramp
    assert ramp["scaled_back_s"] is not None and result["met"]["scales_back"], ramp
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_window_too_short_to_read_a_rate_is_refused_by_name(capsys):
    from bench.fleet.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--window", "2"])
    assert exit_.value.code == 2 and "--window must be at least 4" in capsys.readouterr().err


def test_the_layouts_benchmark_measures_every_layout_of_the_latency_and_trade_off_tables():
    """bench/fleet/layouts.py (its run is BENCHMARKS.md's): one replica per expert of g GPUs and
    one co-located replica of g (Ulysses, or Ulysses x CFG), the 16-GPU replica; the trade-off's
    layouts are the busiest of 1, 4, 8 and 16 GPUs a replica that fit the fleet."""
    from bench.fleet.harness import Shape
    from bench.fleet.layouts import latency_layouts, met, tradeoff_layouts
    from sim.cost_model import CostModel

    cost, shape = CostModel("h100"), Shape(1280, 720)
    cases = latency_layouts([1, 2, 4, 8], cost, (26, 14), shape)
    named = {(c.placement, c.ulysses, c.cfg, c.gpus) for c in cases}
    disaggregated = {("disaggregated", g, 1, 2 * g) for g in (1, 2, 4, 8)}
    co_located = {("co_located", g, 1, g) for g in (1, 2, 4, 8)} | {("co_located", g, 2, 2 * g) for g in (1, 2, 4)}
    assert named == disaggregated | co_located | {("co_located", 8, 2, 16)}
    assert all(c.high_noise == 1 for c in cases)  # one video alone: one replica of each
    assert [c.degree for c in tradeoff_layouts(8, cost, (26, 14), shape)] == [1, 4, 8]
    assert [c.degree for c in tradeoff_layouts(32, cost, (26, 14), shape)] == [1, 4, 8, 16]
    rows = [{"gpus": 8, "latency_s": 155.5}, {"gpus": 16, "latency_s": 91.0}]
    rows += [{"gpus": 16, "decoder_gpus": 4, "latency_s": 80.0}]  # 19 GPUs in all: not a 16-GPU figure
    assert met({"latency": rows, "few_step": [{"gpus": 8, "latency_s": 31.0}], "tradeoff": {}}) == {
        "latency_8_gpus": True,
        "latency_16_gpus": False,
        "few_step_8_gpus": False,
        "no_failures": True,
    }


def test_the_few_step_section_splits_the_decode_that_dominates_an_unguided_video(settings):
    """4 unguided steps (2 + 2 at shift 5): one GPU and the fastest 8-GPU layout, with the decode
    on one GPU and shared over 4; no CFG-parallel layout (an unguided step has one forward); the
    adapter's videos need more decoder GPUs a fleet, each stage counted."""
    from bench.fleet.harness import Shape
    from bench.fleet.layouts import few_step_layouts, per_gpu
    from sim.cost_model import CostModel

    cost, shape = CostModel("h100"), Shape(1280, 720)
    cases = few_step_layouts(cost, (2, 2), shape, settings, 4)
    assert [(layout.gpus <= 8, ranks) for layout, ranks in cases] == [(True, 1), (True, 1), (True, 4), (True, 4)]
    assert [layout.gpus for layout, _ in cases][::2] == [1, 1] and all(layout.cfg == 1 for layout, _ in cases)
    (one, _), (eight, _), (one_split, _), (eight_split, _) = cases
    decode = cost.decode_seconds(720, 1280, 81)
    assert eight.latency_s - eight_split.latency_s > decode / 2  # the decode was most of it; split, it is not
    assert one.latency_s > eight.latency_s and one_split.latency_s > eight_split.latency_s
    guided, fast = per_gpu(cost, shape, (26, 14), True), per_gpu(cost, shape, (2, 2), False)
    assert fast["decoder_gpus"] > guided["decoder_gpus"] == 1
    assert fast["videos_per_hour_per_gpu"] > 5 * guided["videos_per_hour_per_gpu"]
