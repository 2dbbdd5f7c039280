"""The `HighNoiseExpert` Serve deployment: checkpoint `transformer` (stages/expert.py), one per
replica, so per GPU."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.experts import ExpertKind
from contract.settings import Settings
from deployments.expert_phase import ExpertPhase


@serve.deployment(name=ExpertKind.HIGH_NOISE.deployment)
class HighNoiseExpert(ExpertPhase):
    """Layout and motion: the steps with t >= boundary (shared by a template's requests)."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        super().__init__(settings, jobs, ExpertKind.HIGH_NOISE)
