"""The stage sequence of one job, written once: encode -> high-noise -> low-noise -> decode
-> score, with template mode, the result cache and the physics repair loop.

The in-process `Pipeline` (`t2v generate`, the local batch engine) and the Serve ingress
(HTTP, the serve batch engine) run every job through `JobRunner`; only the `Stages` they
hand it differ. In process a stage call returns its value. On Serve it returns a
`DeploymentResponse`, which the runner passes to the next stage unawaited, so embeddings,
latents and scheduler state travel replica to replica and never through the ingress;
only the decoder's small answer (where the mp4 is, its score) comes back here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cache.keys import ModelIdentity, result_key
from cache.store import LatentCache
from contract.errors import error_summary
from contract.jobs import JobError
from contract.messages import Cancelled, PhysicsAttempt, PhysicsResult, Video
from contract.request import GenerationRequest
from stages.denoising import DenoisingPlan

logger = logging.getLogger(__name__)


@dataclass
class Stages:
    """The stage calls of one job. Each returns its value, an awaitable of it, or (Serve) a
    `DeploymentResponse` that the next call takes as it is."""

    # (job_id, request, base_prompt) -> PromptEmbeddings of the prompt, or the template's base prompt
    encode: Callable[[str, GenerationRequest, bool], Any]
    # (job_id, request, embeddings, base) -> DenoisingState at the boundary; `base`: the
    # template's base-prompt embeddings, whose steps a template's requests share (else None)
    high_noise: Callable[[str, GenerationRequest, Any, Any], Any]
    # (job_id, request, embeddings, boundary, resample_seed) -> final DenoisingState; None on
    # Wan2.1-style checkpoints, where the high-noise expert runs every step. boundary None: the
    # final of a previewed shot, which starts from the preview's latent (`request.from_video`)
    low_noise: Callable[[str, GenerationRequest, Any, Any, int | None], Any] | None
    # (job_id, request, state, attempt) -> Video (decoded, mp4 written or in hand, scored)
    decode: Callable[[str, GenerationRequest, Any, int], Any]


class VideoOutputs:
    """Where the videos of a job's attempts are; the runner keeps the best one. In process
    they are in hand; the Serve app's live in the output store (deployments/ingress.py)."""

    def keep(self, job_id: str, best: Video, attempts: list[Video]) -> Video:
        return best

    def mp4(self, video: Video) -> bytes:
        return video.mp4


class JobEvents:
    """What the runner tells the job's record; in process there is none to tell."""

    async def retrying(self, job_id: str) -> bool:
        """A stage's replica died under the job and it runs again: False if it must not
        (cancelled or ended meanwhile)."""
        return True

    async def add_steps(self, job_id: str, steps: int) -> None:
        """A repair attempt re-runs the low-noise phase: more steps to make progress over."""

    async def current_stage(self, job_id: str) -> str | None:
        """The stage the job was in (to name the one whose replica died)."""
        return None


@dataclass
class Outcome:
    """How a job ended, and with which video."""

    status: Literal["completed", "failed", "cancelled"]
    video: Video | None = None  # the kept video; its physics lists every attempt
    error: JobError | None = None
    result_cache: bool | None = None  # hit, miss, or None when the result cache was not used
    attempts: int = 0  # low-noise phases run (1 + repairs)

    @property
    def physics(self) -> PhysicsResult | None:
        return self.video.physics if self.video else None


@dataclass
class Denoising:
    embeddings: Any  # of the full prompt (the low-noise phase and repairs use them)
    boundary: Any  # the state after the high-noise phase (repairs start again here); None for a final of a shot
    state: Any  # the state after the low-noise phase


@dataclass
class CachedResult:
    mp4: bytes
    physics: PhysicsResult


async def resolve(value: Any) -> Any:
    """The value of a stage call, whichever way the stage answered."""
    return await value if inspect.isawaitable(value) else value


def best_attempt(attempts: list[PhysicsResult], min_dynamics: float) -> int:
    """Which attempt a job keeps: the best score among those that move at least `min_dynamics` as
    much as the first (the first of equals: attempt 0 wins ties). A still video has nothing to
    break, so it cannot win on that."""
    first = attempts[0].dynamics

    def moves_enough(physics: PhysicsResult) -> bool:
        return first is None or physics.dynamics is None or physics.dynamics >= min_dynamics * first

    eligible = [i for i, p in enumerate(attempts) if i == 0 or moves_enough(p)]
    return max(eligible, key=lambda i: attempts[i].score)


@dataclass
class JobRunner:
    stages: Stages
    plan: Callable[[GenerationRequest], DenoisingPlan]
    model: ModelIdentity
    cache: LatentCache | None = None
    outputs: VideoOutputs = field(default_factory=VideoOutputs)
    events: JobEvents = field(default_factory=JobEvents)
    retries: int = 0  # runs again after a replica died under the job (Serve replaces it)
    min_dynamics: float = 0.8  # a repair attempt must move at least this share as much as the first
    replica_died: Callable[[BaseException], bool] = lambda error: False
    finalize_strength: float = 0.6  # where the final of a previewed shot starts (settings.finalize_strength)

    def steps_total(self, request: GenerationRequest) -> int:
        """The denoising steps a job runs (its progress is measured against them)."""
        plan = self.plan(request)
        if request.from_video is not None:
            return len(plan.refinement_steps(self.finalize_strength))
        return plan.num_steps

    # -- 0. the result cache --------------------------------------------------------------

    def cached(self, request: GenerationRequest, owner: str | None = None) -> CachedResult | None:
        """An identical request already made by the same owner (API key): its mp4 and physics."""
        if self.cache is None or not request.cache:
            return None
        hit = self.cache.get("result", result_key(self.model, request, owner))
        return None if hit is None else CachedResult(hit["mp4"], PhysicsResult.model_validate(hit["physics"]))

    # -- the job ----------------------------------------------------------------------------

    async def run(self, job_id: str, request: GenerationRequest, owner: str | None = None) -> Outcome:
        """The stages, run again (up to `retries` times) when a stage's replica died under the
        job. Ends completed, failed or cancelled; never raises for a stage's failure."""
        for attempt in range(self.retries + 1):
            try:
                return await self.run_stages(job_id, request, owner)
            except Exception as error:
                if self.replica_died(error):
                    stage = await self.events.current_stage(job_id) or "a stage"
                    if attempt < self.retries:
                        logger.warning(
                            "job %s: %s's replica died (%s); running it again", job_id, stage, error_summary(error)
                        )
                        if not await self.events.retrying(job_id):
                            return Outcome("cancelled")  # cancelled (or timed out) meanwhile: that stands
                        continue
                    message = (
                        f"{stage}'s replica died while running this job ({error_summary(error)}); "
                        f"retried {attempt} times"
                    )
                    return Outcome("failed", error=JobError(code="replica_died", message=message))
                logger.exception("job %s failed", job_id)
                return Outcome("failed", error=JobError(code="generation_failed", message=error_summary(error)))
        raise AssertionError("unreachable")

    def denoise(self, job_id: str, request: GenerationRequest) -> Denoising:
        """Steps 1-3: the prompt encoded and both expert phases called (on Serve: not awaited)."""
        stages = self.stages
        # 1. Encode the prompt (and the negative prompt, for classifier-free guidance); a
        #    template request's high-noise phase sees its base prompt instead
        embeddings = stages.encode(job_id, request, False)
        if request.from_video is not None:
            # 2-3. The final of a previewed shot: the preview's high-noise phase stands (the shot's
            #      layout and motion); the low-noise expert starts from the preview's latent,
            #      upsampled to this size and re-noised part way (SDEdit), and adds the detail
            if stages.low_noise is None:
                raise ValueError("the final of a shot needs a two-expert (Wan2.2) checkpoint")
            return Denoising(embeddings, None, stages.low_noise(job_id, request, embeddings, None, None))
        base = stages.encode(job_id, request, True) if request.template_mode else None
        # 2. High-noise phase: initial noise, then layout and motion (every step on a
        #    Wan2.1-style checkpoint); its first steps shared by a template's requests through the cache
        boundary = stages.high_noise(job_id, request, embeddings, base)
        # 3. Low-noise phase: detail, from the handed-over latent and scheduler state
        state = boundary
        if stages.low_noise is not None:
            state = stages.low_noise(job_id, request, embeddings, boundary, None)
        return Denoising(embeddings, boundary, state)

    async def run_stages(self, job_id: str, request: GenerationRequest, owner: str | None = None) -> Outcome:
        """One pass through the stages; a stage's failure raises."""
        denoised = self.denoise(job_id, request)
        # 4. Decode, write the mp4 marked as AI-generated, score its physics
        video = await resolve(self.stages.decode(job_id, request, denoised.state, 0))
        if Cancelled.among(video):
            return Outcome("cancelled")
        # 5. Generate, verify, repair: below min_physics_score, re-sample the detail phase
        attempts = await self._repair(job_id, request, denoised.embeddings, denoised.boundary, video)
        if attempts is None:
            return Outcome("cancelled")
        # 6. Keep the best video, and remember it for the next identical request
        best = self._best(attempts)
        record = [
            PhysicsAttempt(attempt=v.attempt, seed=v.seed, score=v.physics.score, dynamics=v.physics.dynamics)
            for v in attempts
        ]
        best = self.outputs.keep(job_id, best, attempts)
        best = best.model_copy(update={"physics": best.physics.model_copy(update={"attempts": record})})
        cache_used = self.cache is not None and request.cache
        if cache_used:  # the next identical request of this owner gets it as is
            value = {"mp4": self.outputs.mp4(best), "physics": best.physics.model_dump()}
            self.cache.put("result", result_key(self.model, request, owner), value)
        return Outcome("completed", best, result_cache=False if cache_used else None, attempts=len(attempts))

    def _best(self, attempts: list[Video]) -> Video:
        return attempts[best_attempt([v.physics for v in attempts], self.min_dynamics)]

    async def _repair(
        self, job_id: str, request: GenerationRequest, embeddings: Any, boundary: Any, first: Video
    ) -> list[Video] | None:
        """Re-sample the low-noise phase with new seeds while the best score is below the
        request's minimum. Returns every attempt's video, or None when the job was cancelled."""
        attempts = [first]
        low_steps = len(self.plan(request).low_noise_steps)
        for attempt in range(1, request.max_retries + 1):
            best = self._best(attempts).physics.score
            if self.stages.low_noise is None or best >= (request.min_physics_score or 0):
                break
            seed = request.resample_seed(attempt)
            await self.events.add_steps(job_id, low_steps)
            state = self.stages.low_noise(job_id, request, embeddings, boundary, seed)
            candidate = await resolve(self.stages.decode(job_id, request, state, attempt))
            if Cancelled.among(candidate):
                return None
            attempts.append(candidate.model_copy(update={"attempt": attempt, "seed": seed}))
        return attempts
