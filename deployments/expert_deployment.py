"""The experts' Serve deployments, called once per phase with the job's embeddings and denoising
state. Disaggregated (the default): `HighNoiseExpert` and `LowNoiseExpert`, one expert
(expert.py) per replica, so per GPU. Co-located (`experts_placement: co_located`): `Experts`,
both experts in every replica, a request's two phases in turn on one GPU."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from contract.experts import CO_LOCATED_DEPLOYMENT, ExpertKind
from contract.messages import Cancelled
from contract.request import GenerationRequest
from contract.settings import Settings
from deployments.checkpoint import Checkpoint
from deployments.denoising import DenoisingState
from deployments.expert import Expert
from deployments.reporting import JobReporter
from deployments.simulated import SimulatedGpu
from deployments.text_encoder import PromptEmbeddings
from monitoring.metrics import metrics


class ExpertPhase:
    """One expert's phase as a replica serves it: the expert, the template cache, job reports."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle, kind: ExpertKind, gpu: SimulatedGpu | None = None):
        self.kind = kind
        self.expert = Expert(Checkpoint.from_settings(settings), kind, gpu=gpu)
        # The high-noise phase of a template is shared through the node's cache.
        self.cache = LatentCache.from_settings(settings) if self.kind is ExpertKind.HIGH_NOISE else None
        self.jobs = jobs
        metrics.zero("steps", expert=self.kind.metric_label, model=self.expert.checkpoint.model_id)

    def check_health(self) -> None:
        """Serve replaces a replica whose step batcher lost its worker: its requests would hang."""
        if self.expert.batcher is not None and not self.expert.batcher.alive:
            raise RuntimeError(f"{self.kind.deployment}: the step batcher's worker thread died")

    def denoise(
        self,
        job_id: str,
        request: GenerationRequest,
        embeddings: PromptEmbeddings | Cancelled,
        state: DenoisingState | Cancelled | None = None,
        resample_seed: int | None = None,
        base: PromptEmbeddings | Cancelled | None = None,
    ) -> DenoisingState | Cancelled:
        """This expert's phase; `state` is the boundary for the low-noise expert, and
        `resample_seed` re-draws its noise (a physics repair); `base` is a template's
        base-prompt embeddings, whose high-noise steps its requests share."""
        reporter = JobReporter(self.jobs, job_id, self.kind.metric_label)

        def work() -> DenoisingState:
            if self.kind is ExpertKind.LOW_NOISE:
                return self.expert.phase(request, embeddings, state, reporter.step, resample_seed)
            boundary, hit = self.expert.shared_phase(request, embeddings, base, self.cache, on_step=reporter.step)
            reporter.cache("boundary", hit)
            return boundary

        return reporter.run(self.kind.stage, work, embeddings, state, base)


@serve.deployment(name=ExpertKind.HIGH_NOISE.deployment)
class HighNoiseExpert(ExpertPhase):
    """Checkpoint `transformer`: layout and motion, the steps with t >= boundary."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        super().__init__(settings, jobs, ExpertKind.HIGH_NOISE)


@serve.deployment(name=ExpertKind.LOW_NOISE.deployment)
class LowNoiseExpert(ExpertPhase):
    """Checkpoint `transformer_2`: detail, the steps below the boundary (and physics repairs)."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        super().__init__(settings, jobs, ExpertKind.LOW_NOISE)


@serve.deployment(name=CO_LOCATED_DEPLOYMENT)
class CoLocatedExperts:
    """Both experts in one replica (one GPU): the ingress calls `high_noise` and `low_noise` on it
    as it calls `denoise` on the two disaggregated deployments. On the simulated accelerator the two
    share one GPU, which swaps them where its memory cannot hold both."""

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        gpu = SimulatedGpu(settings.sim, "experts") if settings.device == "sim" else None
        self.phases = {kind: ExpertPhase(settings, jobs, kind, gpu) for kind in ExpertKind}

    def check_health(self) -> None:
        for phase in self.phases.values():
            phase.check_health()

    def high_noise(self, *args, **kwargs) -> DenoisingState | Cancelled:
        return self.phases[ExpertKind.HIGH_NOISE].denoise(*args, **kwargs)

    def low_noise(self, *args, **kwargs) -> DenoisingState | Cancelled:
        return self.phases[ExpertKind.LOW_NOISE].denoise(*args, **kwargs)
