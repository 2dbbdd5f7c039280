"""The `Experts` Serve deployment (`experts_placement: co_located`): both experts in one
replica (one GPU), a request's two phases in turn."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.experts import CO_LOCATED_DEPLOYMENT, ExpertKind
from contract.settings import Settings
from deployments.expert_phase import ExpertPhase
from sim.gpu import SimulatedGpu
from stages.batching import StepGate
from stages.job_state import JobState


@serve.deployment(name=CO_LOCATED_DEPLOYMENT)
class CoLocatedExperts:
    """The ingress calls `high_noise` and `low_noise` on it as it calls `run` on the two
    disaggregated deployments. On the simulated accelerator the two share one GPU, which swaps
    them where its memory cannot hold both."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        parallel = settings.deployments[ExpertKind.HIGH_NOISE.deployment].parallel
        simulated = settings.device == "sim"
        gpu = SimulatedGpu(settings.sim, "experts", parallel, settings.quantization.both) if simulated else None
        gate = StepGate()  # an interactive step of either expert goes before the other's batch steps
        self.phases = {kind: ExpertPhase(settings, jobs, kind, gpu, gate) for kind in ExpertKind}

    def check_health(self) -> None:
        for phase in self.phases.values():
            phase.check_health()

    async def high_noise(self, state: JobState, attempt: int | None = None, priority: str = "batch") -> JobState:
        return await self.phases[ExpertKind.HIGH_NOISE].run(state, attempt)

    async def low_noise(self, state: JobState, attempt: int | None = None, priority: str = "batch") -> JobState:
        return await self.phases[ExpertKind.LOW_NOISE].run(state, attempt)
