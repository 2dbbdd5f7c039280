"""What the experts' Serve deployments share: one expert's phase as a replica serves it
(`ExpertPhase`), called once per phase with the job's embeddings and denoising state. The
deployments: `HighNoiseExpert` (high_noise_expert.py) and `LowNoiseExpert`
(low_noise_expert.py), one expert (stages/expert.py) per replica, so per GPU; or, with
`experts_placement: co_located`, `Experts` (co_located_experts.py), both in every replica.

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
from contract.experts import ExpertKind
from contract.jobs import latent_key
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.reporting import JobReporter
from monitoring.metrics import metrics
from sim.gpu import SimulatedGpu
from stages.batching import StepGate
from stages.checkpoint import Checkpoint
from stages.denoising import latent_from_bytes
from stages.expert import Expert
from stages.job_state import JobState
from stages.stage_list import HighNoisePhase, LowNoisePhase


class ExpertPhase:
    """One expert's phase as a replica serves it: the expert's stage (stages/stage_list.py), the
    template cache, the request's adapters, job reports."""

    def __init__(
        self,
        settings: Settings,
        jobs: DeploymentHandle,
        kind: ExpertKind,
        gpu: SimulatedGpu | None = None,
        gate: StepGate | None = None,
    ):
        """`gpu`, `gate`: what this expert shares with the other one on the same GPU (co-located)."""
        self.kind = kind
        self.expert = Expert(Checkpoint.from_settings(settings), kind, gpu=gpu, gate=gate)
        self.outputs = OutputStore(settings.output_uri)  # where a preview's latent waits for its final
        if kind is ExpertKind.HIGH_NOISE:  # a template's high-noise phase is shared through the node's cache
            self.stage = HighNoisePhase(self.expert, LatentCache.from_settings(settings))
        else:
            self.stage = LowNoisePhase(self.expert, previews=self._preview_latent)
        self.jobs = jobs
        self.progress_seconds = settings.serving.progress_seconds
        metrics.zero("steps", expert=self.kind.metric_label, model=self.expert.checkpoint.model_id)
        for result in ("hit", "load"):  # the dashboard shows adapter phases from the start, at zero
            metrics.zero("adapter_requests", expert=self.kind.metric_label, result=result)
        for name, info in self.expert.adapters.store.listing().items():  # and each adapter's loads
            if info.problem is None:
                metrics.zero("adapter_loads", expert=self.kind.metric_label, adapter=name)

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
        """Serve replaces a replica whose requests would hang or fail: its step batcher lost its
        worker, or a rank of its group died, hung or failed (Serve then replaces the whole group)."""
        if self.expert.batcher is not None and not self.expert.batcher.alive:
            raise RuntimeError(f"{self.kind.deployment}: the step batcher's worker thread died")
        if broken := self.expert.ranks_broken:
            raise RuntimeError(f"{self.kind.deployment}: its group of ranks is broken ({broken})")

    async def run(self, state: JobState, attempt: int | None = None, priority: str = "batch") -> JobState:
        """The phase on a worker thread, the request's adapters loaded first when Serve routed it
        here with a multiplexed model id (a replica that had them is a hit). `attempt`: a repair
        attempt starting from this state (the boundary). `priority`: the job's, for the router
        (the phase reads the job's own)."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.adapter_sets(model_id)
        return await asyncio.to_thread(self.phase, state, attempt)

    def phase(self, state: JobState, attempt: int | None = None) -> JobState:
        reporter = JobReporter(self.jobs, state.job_id, self.kind.metric_label, self.progress_seconds)
        return self.stage(state, reporter, attempt)


class LoadedAdapters:
    """A multiplexed model of an expert replica: a set of adapters loaded into its expert.
    Serve calls `__del__` when its LRU drops the set; the adapters are unloaded then."""

    def __init__(self, adapters, names: list[str]):
        self.adapters, self.names = adapters, names

    def __del__(self) -> None:
        if self.names:
            self.adapters.unload(self.names)
            self.names = []
