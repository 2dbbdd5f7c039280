"""The `HighNoiseExpert` and `LowNoiseExpert` Serve deployments: one expert (expert.py) per
replica, so per GPU, called once per phase with the job's embeddings and denoising state."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from contract.experts import ExpertKind
from contract.messages import Cancelled
from contract.request import GenerationRequest
from contract.settings import Settings
from deployments.checkpoint import Checkpoint
from deployments.denoising import DenoisingState
from deployments.expert import Expert
from deployments.reporting import JobReporter
from deployments.text_encoder import PromptEmbeddings
from monitoring.metrics import metrics


class ExpertDeployment:
    kind: ExpertKind

    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.expert = Expert(Checkpoint.from_settings(settings), self.kind)
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
class HighNoiseExpert(ExpertDeployment):
    """Checkpoint `transformer`: layout and motion, the steps with t >= boundary."""

    kind = ExpertKind.HIGH_NOISE


@serve.deployment(name=ExpertKind.LOW_NOISE.deployment)
class LowNoiseExpert(ExpertDeployment):
    """Checkpoint `transformer_2`: detail, the steps below the boundary (and physics repairs)."""

    kind = ExpertKind.LOW_NOISE
