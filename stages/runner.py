"""One job through the stage list (stages/stage_list.py), one stage call after another: what the
in-process executor (`Pipeline`: `t2v generate`, the local batch engine) and the Serve executor
(the ingress's job service) share. The Ray Data executor runs the same list as actor pools.

Each stage call takes the previous call's answer: in process the `JobState` itself; on Serve a
`DeploymentResponse` of it, passed on unawaited, so embeddings, latents and scheduler state go
replica to replica and never through the caller, which awaits only the decoder's answer (the
state without tensors: where the video is, its score, timings).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from contract.errors import error_summary, public_error
from contract.jobs import JobError
from contract.messages import JobTrace, PhysicsResult, Video
from contract.request import GenerationRequest
from stages.job_state import JobState, total_timings
from stages.stage_list import REPAIR_FROM, ResultCache, kept_video, repair_stages, stages_for, wants_repair

if TYPE_CHECKING:
    from stages.denoising import DenoisingPlan

logger = logging.getLogger(__name__)

# A stage as an executor calls it: (the previous answer, repair attempt or None) -> the stage's answer
StageCall = Callable[[Any, int | None], Any]


class VideoOutputs:
    """Where the videos of a job's attempts are; the runner keeps the best one. In process
    they are in hand; the Serve app's live in the output store (deployments/serve_executor.py)."""

    def keep(self, job_id: str, best: Video, attempts: list[Video]) -> Video:
        return best

    def cached(self, job_id: str, video: Video) -> dict[str, Any]:
        """The kept video as the result cache keeps it: in hand, its mp4."""
        return {"mp4": video.mp4}


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
    attempts: list[JobState] = field(default_factory=list)  # each attempt's decoded state, in order

    @property
    def physics(self) -> PhysicsResult | None:
        return self.video.physics if self.video else None

    @property
    def kept(self) -> JobState:
        """The decoded state of the kept attempt."""
        return next(s for s in self.attempts if s.attempt == self.video.attempt)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage over every attempt."""
        return total_timings(self.attempts)

    @property
    def trace(self) -> JobTrace:
        """What the stages did over every attempt, for the job's record."""
        spans = [span for state in self.attempts for span in state.trace]
        return JobTrace(timings=self.timings, trace=spans, cache=self.cache)

    @property
    def cache(self) -> dict[str, bool | None]:
        """Cache level -> hit, as the first attempt found them, and the result cache."""
        notes = dict(self.attempts[0].cache) if self.attempts else {}
        return {**notes, "result": self.result_cache}


async def resolve(value: Any) -> Any:
    """The value of a stage call, whichever way the stage answered."""
    return await value if inspect.isawaitable(value) else value


@dataclass
class JobRunner:
    calls: Callable[[JobState], dict[str, StageCall]]  # a job's stage calls, by stage name
    two_experts: bool
    plan: Callable[[GenerationRequest], DenoisingPlan]
    results: ResultCache
    outputs: VideoOutputs = field(default_factory=VideoOutputs)
    events: JobEvents = field(default_factory=JobEvents)
    retries: int = 0  # runs again after a replica died under the job (Serve replaces it)
    min_dynamics: float = 0.8  # a repair attempt must move at least this share as much as the first
    replica_died: Callable[[BaseException], bool] = lambda error: False
    finalize_strength: float = 0.6  # where the final of a previewed shot starts (settings.finalize_strength)
    ended: Callable[[JobState], None] = lambda state: None  # after every run, however it ended

    def steps_total(self, request: GenerationRequest) -> int:
        """The denoising steps a job runs (its progress is measured against them)."""
        plan = self.plan(request)
        if request.from_video is not None:
            return len(plan.refinement_steps(self.finalize_strength))
        return plan.num_steps

    async def run(self, state: JobState, owner: str | None = None) -> Outcome:
        """The stages, run again (up to `retries` times) when a stage's replica died under the
        job. Ends completed, failed or cancelled; never raises for a stage's failure."""
        try:
            return await self._run(state, owner)
        finally:
            self.ended(state)

    async def _run(self, state: JobState, owner: str | None) -> Outcome:
        job_id = state.job_id
        for attempt in range(self.retries + 1):
            try:
                return await self.run_stages(state, owner)
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
                        f"{stage}'s replica died while running this job ({public_error(error)}); "
                        f"retried {attempt} times"
                    )
                    return Outcome("failed", error=JobError(code="replica_died", message=message))
                logger.exception("job %s failed", job_id)
                return Outcome("failed", error=JobError(code="generation_failed", message=public_error(error)))
        raise AssertionError("unreachable")

    def denoise(self, state: JobState) -> tuple[Any, Any]:
        """Every stage up to the decoder called (on Serve: not awaited): (the answer a repair
        starts again from, the last answer)."""
        calls, answer, restart = self.calls(state), state, None
        for spec in stages_for(state, self.two_experts)[:-1]:
            if spec.name == REPAIR_FROM:
                restart = answer
            answer = calls[spec.name](answer, None)
        return restart, answer

    async def run_stages(self, state: JobState, owner: str | None = None) -> Outcome:
        """One pass through the stage list; a stage's failure raises."""
        # 1-3. Encode the prompt, the high-noise phase (layout and motion), the low-noise phase (detail)
        restart, denoised = self.denoise(state)
        # 4. Decode, write the mp4 marked as AI-generated, score its physics
        calls = self.calls(state)
        *_, decode = stages_for(state, self.two_experts)
        first = await resolve(calls[decode.name](denoised, None))
        if first.cancelled:
            return Outcome("cancelled")
        # 5. Generate, verify, repair: below min_physics_score, re-sample the detail phase
        attempts = [first]
        repair = repair_stages(self.two_experts) if restart is not None else []
        while repair and wants_repair(state.request, [a.video.physics for a in attempts], self.min_dynamics):
            number = len(attempts)
            await self.events.add_steps(state.job_id, len(self.plan(state.request).low_noise_steps))
            answer = calls[repair[0].name](restart, number)
            for spec in repair[1:]:
                answer = calls[spec.name](answer, None)
            attempt = await resolve(answer)
            if attempt.cancelled:
                return Outcome("cancelled")
            attempts.append(attempt)
        # 6. Keep the best video, and remember it for the next identical request
        videos = [a.video for a in attempts]
        best = self.outputs.keep(state.job_id, kept_video(videos, self.min_dynamics), videos)
        result_cache = None
        if self.results.used(state.request):  # the next identical request of this owner gets it as is
            self.results.remember(state.request, best.physics, self.outputs.cached(state.job_id, best), owner)
            result_cache = False
        return Outcome("completed", best, result_cache=result_cache, attempts=attempts)
