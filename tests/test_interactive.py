"""Mixed traffic on one app: requests with `priority: interactive` run on the interactive pool's
experts (settings `interactive`: deployments of their own, wide for latency), the others on the
default pool. Served, both make the same video: tests/test_parallel.py, whose app's interactive
pool runs on ranks."""

from __future__ import annotations

import pytest

from contract.experts import ExpertKind
from contract.settings import Settings, StepCacheSettings


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
