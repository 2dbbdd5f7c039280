"""Mixed traffic on one app: requests with `priority: interactive` run on the interactive pool's
experts (settings `interactive`: deployments of their own, wide for latency), the others on the
default pool. Served, both make the same video: tests/test_parallel.py, whose app's interactive
pool runs on ranks."""

from __future__ import annotations

import pytest

from contract.experts import ExpertKind
from contract.request import GenerationRequest
from contract.settings import Settings, StepCacheSettings
from deployments.serve_executor import ExpertPools
from stages.job_state import JobState


def test_the_interactive_pool_has_its_own_settings(settings):
    experts = {"parallel": {"ulysses": 2}, "max_replicas": 3}
    wide = Settings.model_validate({**settings.model_dump(), "interactive": {"enabled": True, "experts": experts}})
    pool = wide.interactive_pool()
    for kind in ExpertKind:
        assert pool.deployments[kind.deployment].parallel.ulysses == 2  # what its replicas read
        assert wide.deployments[kind.deployment].parallel.ulysses == 1  # the default pool keeps its own
        assert kind.interactive_deployment == kind.deployment + "Interactive"
    with pytest.raises(ValueError, match=r"does not run on parallel experts \(\['interactive.experts'\]\)"):
        Settings.model_validate({**wide.model_dump(), "step_cache": StepCacheSettings(kind="first_block").model_dump()})
    with pytest.raises(ValueError, match="priority"):
        Settings.model_validate({**wide.model_dump(), "interactive": {"enabled": True, "priority": 1}})
    assert not pool.batching.enabled  # nothing lent: its replicas run steps as they come


def test_a_pool_that_backfills_schedules_its_steps(settings):
    lending = {"enabled": True, "experts": {"max_ongoing_requests": 3}, "backfill": 2}
    pool = Settings.model_validate({**settings.model_dump(), "interactive": lending}).interactive_pool()
    assert pool.batching.enabled and not settings.batching.enabled  # so an interactive step goes first


def test_the_pools_lend_at_most_backfill_batch_jobs_and_take_them_back(settings):
    def job(name: str, priority: str = "batch") -> JobState:
        return JobState(name, GenerationRequest.build(settings, prompt="a red ball", priority=priority))

    pools = ExpertPools({"batch": "default experts", "interactive": "wide experts"}, backfill=2)
    first, second, third = job("b1"), job("b2"), job("b3")
    assert [pools(j) for j in (first, second, third)] == ["wide experts", "wide experts", "default experts"]
    assert pools(first) == "wide experts" and pools(third) == "default experts"  # a job keeps its pool
    assert pools(job("i1", "interactive")) == "wide experts"  # never counted against the loans
    pools.release(first)
    assert pools(job("b4")) == "wide experts" and pools(job("b5")) == "default experts"
    pools.release(third)  # a job that was not lent frees nothing
    assert pools(job("b6")) == "default experts"

    alone = ExpertPools({"batch": "default experts"}, backfill=2)  # no interactive pool: nothing to lend
    assert alone(job("b7")) == "default experts" and alone(job("i2", "interactive")) == "default experts"
