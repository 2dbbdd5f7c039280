"""Expert replica sizing from the step split: the best split of a GPU budget, and `t2v plan`."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app as cli
from cluster.sizing import expert_split
from contract.settings import Settings


@pytest.mark.parametrize("replicas", [2, 3, 5, 8, 13])
@pytest.mark.parametrize("high, low, high_cost", [(26, 14, 1.0), (7, 3, 1.0), (14, 6, 1.4)])
def test_no_other_split_finishes_more_jobs(replicas, high, low, high_cost):
    best = expert_split(replicas, high, low, high_cost)
    assert best.high_noise + best.low_noise == replicas and min(best.high_noise, best.low_noise) >= 1
    for h in range(1, replicas):
        assert min(h / (high * high_cost), (replicas - h) / low) <= best.jobs_per_second_per_step_second + 1e-12
    assert max(best.busy) == pytest.approx(1.0)  # the bottleneck pool works all the time


def test_the_high_noise_expert_gets_more_replicas_for_its_larger_share():
    split = expert_split(8, 26, 14)
    assert (split.high_noise, split.low_noise) == (5, 3)
    assert split.busy[1] == pytest.approx(0.897, abs=1e-3)
    with pytest.raises(ValueError):
        expert_split(1, 26, 14)


def test_plan_command_prints_settings_that_load(wan22_dir):
    result = CliRunner().invoke(cli, ["plan", "--gpus", "8", "--steps", "40", "--model", str(wan22_dir)])
    assert result.exit_code == 0, result.output
    assert "26 high-noise, 14 low-noise" in result.output
    overrides = yaml.safe_load(result.output[result.output.index("deployments:") :])
    settings = Settings(model=wan22_dir, **overrides)
    assert settings.deployments["HighNoiseExpert"].min_replicas == 5
    assert settings.deployments["LowNoiseExpert"].max_replicas == 3


def test_layouts_trade_videos_per_hour_for_one_video_s_latency():
    """On the cost model (SIMULATED): wider replicas make one video faster and fewer videos per
    hour per GPU; the choice follows the target."""
    from cluster.sizing import choose, layouts
    from sim.cost_model import CostModel

    cost = CostModel("h100")
    found = layouts(8, 26, 14, cost, 720, 1280, 81)
    assert all(layout.gpus <= 8 for layout in found)
    assert all(40 % layout.ulysses == 0 for layout in found)  # Ulysses: a divisor of the 40 heads
    by = {(layout.placement, layout.ulysses, layout.cfg): layout for layout in found}
    one_gpu = cost.video_seconds(720, 1280, 81, 40)
    assert by["disaggregated", 1, 1].latency_s == pytest.approx(one_gpu)  # 1,040 s, the calibration
    assert by["co_located", 8, 1].latency_s == pytest.approx(cost.video_seconds(720, 1280, 81, 40, gpus=8))
    assert by["co_located", 4, 2].latency_s == pytest.approx(cost.video_seconds(720, 1280, 81, 40, gpus=4, cfg=2))
    co_located = [by["co_located", u, 1].latency_s for u in (8, 4, 2)]
    assert co_located == sorted(co_located) and co_located[-1] < one_gpu
    # CFG halves a step on two GPUs a little less well than Ulysses does over NVLink (0.95 against ~0.97)
    assert by["co_located", 2, 1].latency_s < by["co_located", 1, 2].latency_s < one_gpu
    assert by["co_located", 4, 2].as_settings()["deployments"]["HighNoiseExpert"]["parallel"] == {
        "ulysses": 4,
        "cfg": 2,
    }
    fastest, busiest = choose(found, "latency"), choose(found, "throughput")
    assert (fastest.placement, fastest.degree) == ("co_located", 8) and fastest.latency_s <= 160
    assert busiest.degree == 1 and busiest.videos_per_hour >= max(layout.videos_per_hour for layout in found)
    within = choose(found, latency_seconds=600)
    assert within.latency_s <= 600 and within.videos_per_hour == max(
        layout.videos_per_hour for layout in found if layout.latency_s <= 600
    )
    with pytest.raises(ValueError, match="no layout makes a video in 60 s"):
        choose(found, latency_seconds=60)


def test_plan_for_latency_prints_settings_that_load_and_one_json_line(wan22_dir):
    import json

    result = CliRunner().invoke(cli, ["plan", "--gpus", "8", "--target", "latency", "--model", str(wan22_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("SIMULATED") and "<- chosen" in result.output
    overrides = yaml.safe_load(result.output[result.output.index("experts_placement:") :])
    settings = Settings(model=wan22_dir, **overrides)
    assert settings.experts_placement == "co_located" and settings.deployments["HighNoiseExpert"].parallel.ulysses == 8

    line = CliRunner().invoke(
        cli, ["plan", "--gpus", "16", "--latency-seconds", "300", "--json", "--model", str(wan22_dir)]
    )
    chosen = json.loads(line.output.strip().splitlines()[-1])
    assert chosen["latency_s"] <= 300 and chosen["videos_per_hour"] > 0 and chosen["gpus"] <= 16
    # 16 GPUs: 40 heads stop Ulysses at 8, the guided halves on two groups of 8 go further
    fastest = json.loads(
        CliRunner()
        .invoke(cli, ["plan", "--gpus", "16", "--target", "latency", "--json", "--model", str(wan22_dir)])
        .output.strip()
        .splitlines()[-1]
    )
    assert (fastest["ulysses"], fastest["cfg"], fastest["gpus"]) == (8, 2, 16) and fastest["latency_s"] < 100
    refused = CliRunner().invoke(cli, ["plan", "--gpus", "8", "--latency-seconds", "10", "--model", str(wan22_dir)])
    assert refused.exit_code == 2 and "no layout makes a video in 10 s" in refused.output


def test_plan_with_quantized_experts_times_them_and_says_so(wan22_dir):
    import json

    def chosen(*extra: str) -> dict:
        args = ["plan", "--gpus", "8", "--target", "latency", "--gpu", "l40s", "--json", "--model", str(wan22_dir)]
        result = CliRunner().invoke(cli, [*args, *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])

    plain, fp8 = chosen(), chosen("--quantization", "fp8")
    assert fp8["quantization"] == "fp8" and fp8["latency_s"] < plain["latency_s"]  # faster linear layers
    settings = Settings(model=wan22_dir, **fp8["settings"])
    assert settings.quantization.high_noise == settings.quantization.low_noise == "fp8"
    # the A100 has no FP8 tensor cores; without a target there is nothing to time
    refused = CliRunner().invoke(
        cli, ["plan", "--gpus", "8", "--target", "latency", "--gpu", "a100", "--quantization", "fp8"]
    )
    assert refused.exit_code == 2 and "FP8 tensor cores" in refused.output
    untimed = CliRunner().invoke(cli, ["plan", "--gpus", "8", "--quantization", "fp8", "--model", str(wan22_dir)])
    assert untimed.exit_code == 2 and "--target" in untimed.output
