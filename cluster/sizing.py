"""Replica sizing of the two experts from the step split and the per-step cost.

A job needs `high` steps of the high-noise expert and `low` of the low-noise expert (the
boundary splits the schedule unevenly: 26 / 14 of 40 steps for Wan2.2 A14B's shift 12 and
boundary 0.875). With per-step costs c_h and c_l, an expert pool of h and l replicas
finishes jobs at min(h / (high c_h), l / (low c_l)) per second; the split of a GPU budget
that maximises it keeps both experts equally busy, which is what `expert_split` returns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertSplit:
    high_noise: int
    low_noise: int
    jobs_per_second_per_step_second: float  # throughput in units of 1 / (per-step seconds)
    busy: tuple[float, float]  # fraction of time each expert pool works at that throughput

    def as_settings(self) -> dict:
        """`deployments` overrides for Settings / serve.yaml: fixed replica counts."""
        return {
            "HighNoiseExpert": {"min_replicas": self.high_noise, "max_replicas": self.high_noise},
            "LowNoiseExpert": {"min_replicas": self.low_noise, "max_replicas": self.low_noise},
        }


def expert_split(
    replicas: int, high_steps: int, low_steps: int, high_cost: float = 1.0, low_cost: float = 1.0
) -> ExpertSplit:
    """The split of `replicas` expert replicas (GPUs) between the experts with the highest
    throughput; ties go to the split with the less idle pool."""
    if replicas < 2:
        raise ValueError("each expert needs at least one replica: replicas must be >= 2")
    high_work, low_work = high_steps * high_cost, low_steps * low_cost
    best = None
    for high in range(1, replicas):
        low = replicas - high
        rate = min(high / high_work, low / low_work) if low_work else high / high_work
        busy = (rate * high_work / high, rate * low_work / low)
        key = (rate, min(busy))
        if best is None or key > best[0]:
            best = (key, ExpertSplit(high, low, rate, busy))
    return best[1]
