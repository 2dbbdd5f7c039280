"""The `LowNoiseExpert` Serve deployment: checkpoint `transformer_2` (stages/expert.py), one per
replica, so per GPU."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.experts import ExpertKind
from contract.settings import Settings
from deployments.expert_phase import ExpertPhase


@serve.deployment(name=ExpertKind.LOW_NOISE.deployment)
class LowNoiseExpert(ExpertPhase):
    """Detail: the steps below the boundary, physics repairs and the final of a previewed shot."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        super().__init__(settings, jobs, ExpertKind.LOW_NOISE)
