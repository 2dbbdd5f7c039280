"""The Serve executor of the stage list: the shared `JobRunner` (stages/runner.py) whose stage
calls are the stage deployments' handles, and what it tells the job store.

Each stage call answers a `DeploymentResponse` of the job's state, which the runner hands to the
next stage as it is: embeddings, latents and scheduler state travel replica to replica as Ray
objects, never through the ingress, which awaits only the decoder's answer (the state without
tensors). The decoders write every attempt's mp4 to the output store; the kept one ends up under
the job's own key, copied within the store, and the result cache refers to it there: no mp4
passes through the ingress.
"""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from contract.experts import CO_LOCATED_DEPLOYMENT, INTERACTIVE, ExpertKind
from contract.jobs import latent_key, video_key
from contract.messages import Video
from contract.settings import Settings
from contract.storage import OutputStore
from stages.checkpoint import Checkpoint
from stages.job_state import JobState
from stages.runner import JobEvents, JobRunner, StageCall, VideoOutputs
from stages.stage_list import DecodeVideo, EncodePrompt, HighNoisePhase, LowNoisePhase, ResultCache


class StoreOutputs(VideoOutputs):
    """The decoders write every attempt's mp4 to the shared output store; the kept one
    ends up under the job's own key."""

    def __init__(self, store: OutputStore):
        self.store = store

    def keep(self, job_id: str, best: Video, attempts: list[Video]) -> Video:
        """The best attempt's mp4 and latent under the job's keys; the other attempts' deleted."""
        key = video_key(job_id)
        if best.key != key:  # copied within the store: the mp4 never passes through the ingress
            self.store.copy(best.key, key)
            self.store.copy(latent_key(job_id, best.attempt), latent_key(job_id))
        for video in attempts:
            if video.key != key:
                self.store.delete(video.key)
                self.store.delete(latent_key(job_id, video.attempt))
        return best.model_copy(update={"key": key})

    def cached(self, job_id: str, video: Video) -> dict[str, str]:
        # the result cache refers to the stored video, and to its latent: a hit can be finalized too
        return {"video": video.key, "latent": latent_key(job_id)}


class JobStoreEvents(JobEvents):
    def __init__(self, jobs: DeploymentHandle):
        self.jobs = jobs

    async def retrying(self, job_id: str) -> bool:
        return await self.jobs.retrying.remote(job_id)

    async def add_steps(self, job_id: str, steps: int) -> None:
        await self.jobs.add_steps.remote(job_id, steps)

    async def current_stage(self, job_id: str) -> str | None:
        job = await self.jobs.get.remote(job_id)
        return job.stage if job else None


def replica_died(error: BaseException) -> bool:
    """A replica (of a stage, or the job store a stage reports to) died under the call,
    here or in a stage this one waited on: Ray wraps the cause once per hop (`cause` of a
    RayTaskError; `__cause__` of Serve's "an upstream actor died" error)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    while error is not None:
        if isinstance(error, (RayActorError, ActorUnavailableError)):
            return True
        error = getattr(error, "cause", None) or error.__cause__
    return False


def expert_call(handle: DeploymentHandle, method: str, kind: ExpertKind, job: JobState) -> StageCall:
    """A stage call to an expert deployment's `method`, routed by Serve model multiplexing to a
    replica that holds the job's adapters for that expert (any replica when it has none); its
    `priority` is for the interactive pool's router (deployments/interactive_router.py)."""
    model_id = job.adapter_set(kind)
    target = getattr(handle.options(multiplexed_model_id=model_id) if model_id else handle, method)
    priority = job.request.priority
    return lambda state, attempt: target.remote(state, attempt, priority=priority)


def expert_methods(
    high_noise_expert: DeploymentHandle, low_noise_expert: DeploymentHandle | None
) -> dict[ExpertKind, tuple[DeploymentHandle, str]]:
    """One pool's experts: each kind's deployment handle and the method that runs its phase."""
    if high_noise_expert.deployment_name in (CO_LOCATED_DEPLOYMENT, CO_LOCATED_DEPLOYMENT + INTERACTIVE):
        return {  # both experts, a method each
            ExpertKind.HIGH_NOISE: (high_noise_expert, "high_noise"),
            ExpertKind.LOW_NOISE: (high_noise_expert, "low_noise"),
        }
    experts = {ExpertKind.HIGH_NOISE: (high_noise_expert, "run")}
    if low_noise_expert is not None:
        experts[ExpertKind.LOW_NOISE] = (low_noise_expert, "run")
    return experts


class ExpertPools:
    """Which pool of experts runs a job: the interactive pool for `priority: interactive`, and for
    up to `backfill` batch jobs at once (lent while the pool would idle: its replicas let an
    interactive job's steps go first); every other job the default pool. A job keeps its pool
    from its first stage to its last."""

    def __init__(self, pools: dict, backfill: int = 0):
        self.pools, self.backfill = pools, backfill
        self.lent: set[str] = set()  # the batch jobs on the interactive pool now

    def name(self, job: JobState) -> str:
        if "interactive" not in self.pools:
            return "batch"
        if job.request.priority == "interactive":
            return "interactive"
        if job.job_id in self.lent or len(self.lent) < self.backfill:
            self.lent.add(job.job_id)
            return "interactive"
        return "batch"

    def __call__(self, job: JobState) -> dict:
        return self.pools[self.name(job)]

    def release(self, job: JobState) -> None:
        """The job ended: its loan (if any) is free for the next batch job."""
        self.lent.discard(job.job_id)


def serve_runner(
    settings: Settings,
    checkpoint: Checkpoint,
    jobs: DeploymentHandle,
    text_encoder: DeploymentHandle,
    high_noise_expert: DeploymentHandle,
    low_noise_expert: DeploymentHandle | None,
    decoder: DeploymentHandle,
    interactive_high_noise: DeploymentHandle | None = None,
    interactive_low_noise: DeploymentHandle | None = None,
) -> JobRunner:
    """The stage list on the deployments' handles: a job's experts from the interactive pool
    when it asks for it and the app has one, else from the default pool. Imports torch and
    diffusers (the scheduler's plan, the result cache's model identity)."""
    from stages.denoising import Scheduler

    pools = {"batch": expert_methods(high_noise_expert, low_noise_expert)}
    if interactive_high_noise is not None:
        pools["interactive"] = expert_methods(interactive_high_noise, interactive_low_noise)
    pools = ExpertPools(pools, settings.interactive.backfill)

    def calls(job: JobState) -> dict[str, StageCall]:
        """Stage name -> the call of the deployment that serves it; the job's priority (and the
        pools' backfill) picks the experts' pool, its adapters an expert's replica."""
        experts = pools(job)
        calls = {
            EncodePrompt.name: text_encoder.run.remote,
            HighNoisePhase.name: expert_call(*experts[ExpertKind.HIGH_NOISE], ExpertKind.HIGH_NOISE, job),
            DecodeVideo.name: decoder.run.remote,
        }
        if ExpertKind.LOW_NOISE in experts:
            calls[LowNoisePhase.name] = expert_call(*experts[ExpertKind.LOW_NOISE], ExpertKind.LOW_NOISE, job)
        return calls

    scheduler = Scheduler.from_checkpoint(checkpoint)
    store = OutputStore(settings.output_uri)
    return JobRunner(
        calls,
        checkpoint.has_low_noise_expert,
        plan=lambda request: scheduler.plan(request.num_inference_steps, checkpoint.boundary_ratio, request.flow_shift),
        results=ResultCache(LatentCache.from_settings(settings), checkpoint.identity),
        outputs=StoreOutputs(store),
        events=JobStoreEvents(jobs),
        retries=settings.serving.job_retries,
        min_dynamics=settings.repair_min_dynamics,
        replica_died=replica_died,
        finalize_strength=settings.finalize_strength,
        ended=pools.release,
    )
