"""The experts' Serve deployments, called once per phase with the job's embeddings and denoising
state. Disaggregated (the default): `HighNoiseExpert` and `LowNoiseExpert`, one expert
(expert.py) per replica, so per GPU. Co-located (`experts_placement: co_located`): `Experts`,
both experts in every replica, a request's two phases in turn on one GPU.

LoRA adapters ride on Ray Serve model multiplexing: the ingress calls an expert with the
multiplexed model id of the request's adapters for that expert (contract/adapters.py), Serve
routes it to a replica that holds them, and a replica keeps up to `adapters.max_loaded`
sets, least recently used unloaded first."""

from __future__ import annotations

import asyncio

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from contract.adapters import parse_adapter_set_id
from contract.experts import CO_LOCATED_DEPLOYMENT, ExpertKind
from contract.jobs import latent_key
from contract.messages import Cancelled
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.checkpoint import Checkpoint
from deployments.denoising import DenoisingState, latent_from_bytes
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
        self.outputs = OutputStore(settings.output_uri)  # where a preview's latent waits for its final
        metrics.zero("steps", expert=self.kind.metric_label, model=self.expert.checkpoint.model_id)
        for result in ("hit", "load"):  # the dashboard shows adapter phases from the start, at zero
            metrics.zero("adapter_requests", expert=self.kind.metric_label, result=result)

        async def load_adapters(model_id: str) -> LoadedAdapters:
            pairs = parse_adapter_set_id(model_id)
            await asyncio.to_thread(self.expert.adapters.load, pairs)
            return LoadedAdapters(self.expert.adapters, [name for name, _ in pairs])

        # Set up here, not with the decorator on a method: the LRU's size is a setting.
        self.adapter_sets = serve.multiplexed(max_num_models_per_replica=settings.adapters.max_loaded)(load_adapters)

    def _preview_latent(self, video_id: str) -> torch.Tensor:
        """The final latent the decoder kept of the video whose shot a `from` request finishes."""
        data = self.outputs.read(latent_key(video_id))
        if data is None:
            raise ValueError(f"the latent of video {video_id} is gone (deleted since the final was asked for)")
        return latent_from_bytes(data)

    def check_health(self) -> None:
        """Serve replaces a replica whose step batcher lost its worker: its requests would hang."""
        if self.expert.batcher is not None and not self.expert.batcher.alive:
            raise RuntimeError(f"{self.kind.deployment}: the step batcher's worker thread died")

    async def denoise(self, *args, **kwargs) -> DenoisingState | Cancelled:
        """`phase` on a worker thread, the request's adapters loaded first when Serve routed it
        here with a multiplexed model id (a replica that had them is a hit)."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.adapter_sets(model_id)
        return await asyncio.to_thread(self.phase, *args, **kwargs)

    def phase(
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
                source = self._preview_latent(request.from_video) if state is None and request.from_video else None
                return self.expert.phase(request, embeddings, state, reporter.step, resample_seed, source)
            boundary, hit = self.expert.shared_phase(request, embeddings, base, self.cache, on_step=reporter.step)
            reporter.cache("boundary", hit)
            return boundary

        return reporter.run(self.kind.stage, work, embeddings, state, base)


class LoadedAdapters:
    """A multiplexed model of an expert replica: a set of adapters loaded into its expert.
    Serve calls `__del__` when its LRU drops the set; the adapters are unloaded then."""

    def __init__(self, adapters, names: list[str]):
        self.adapters, self.names = adapters, names

    def __del__(self) -> None:
        if self.names:
            self.adapters.unload(self.names)
            self.names = []


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

    async def high_noise(self, *args, **kwargs) -> DenoisingState | Cancelled:
        return await self.phases[ExpertKind.HIGH_NOISE].denoise(*args, **kwargs)

    async def low_noise(self, *args, **kwargs) -> DenoisingState | Cancelled:
        return await self.phases[ExpertKind.LOW_NOISE].denoise(*args, **kwargs)
