"""The arithmetic of bench/batch_fleet.py's ideal: what the data engine on a simulated fleet is
held against (no Ray here; the benchmark itself runs for minutes)."""

from __future__ import annotations

import pytest

from bench.batch_fleet import ideal, pool_work, share_split, table
from bench.fleet.harness import Shape
from cluster.sizing import expert_split
from contract.experts import ExpertKind
from sim.cost_model import CostModel

SHAPE = Shape(1280, 720)
STEPS = (26, 14)  # Wan2.2 A14B's 40 steps


def test_the_table_has_its_share_of_template_rows_in_groups_of_distinct_rows() -> None:
    rows, groups = table(1000, 0.8, SHAPE)
    templated = [r for r in rows if "template" in r]
    assert len(rows) == 1000 and len(templated) == 800 and groups == 40
    assert len({(r["template"], r["seed"]) for r in templated}) == groups  # a group: one template and seed
    assert len({r["id"] for r in rows}) == 1000
    assert len({r["prompt"] for r in rows if "prompt" in r}) == 200
    assert table(10, 0.0, SHAPE)[1] == 0


def test_the_ideal_is_the_bottleneck_pools_gpus_over_its_gpu_seconds_per_row() -> None:
    cost = CostModel("h100")
    step = cost.step_seconds(ExpertKind.HIGH_NOISE, SHAPE.height, SHAPE.width, SHAPE.frames)
    split = expert_split(8, *STEPS)
    gpus = {"encode": 1, "high_noise": split.high_noise, "low_noise": split.low_noise, "decode": 2}

    free = ideal(pool_work(cost, SHAPE, STEPS, 1000, 0, 0), gpus, 1000)
    assert (split.high_noise, split.low_noise) == (5, 3)
    assert free["bottleneck"] == "high_noise"
    assert free["rows_per_second"] == pytest.approx(5 / (26 * step))
    assert free["utilisation"]["high_noise"] == pytest.approx(1.0)
    assert free["utilisation"]["low_noise"] == pytest.approx((14 / 3) / (26 / 5))

    # 800 template rows in 40 groups: only 240 rows run the high-noise phase, so the low-noise pool limits
    templated = ideal(pool_work(cost, SHAPE, STEPS, 1000, 800, 40), gpus, 1000)
    assert templated["bottleneck"] == "low_noise"
    assert templated["rows_per_second"] == pytest.approx(3 / (14 * step))
    assert templated["utilisation"]["high_noise"] == pytest.approx(0.24 * 26 / 5 / (14 / 3))
    # split for that share, the experts trade places
    replanned = share_split(8, STEPS, 1000, 800, 40)
    assert (replanned.high_noise, replanned.low_noise) == (3, 5)
