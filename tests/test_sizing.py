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
