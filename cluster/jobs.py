"""Job records: queued -> in_progress -> completed | failed | cancelled.

One `JobStore` holds every record of the cluster in memory and writes each change of
status through to the `OutputStore`, so a restarted store (or ingress) loses nothing.
Stages report progress here step by step and learn here that a job was cancelled.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel

from cluster.request import GenerationRequest
from cluster.storage import OutputStore
from monitoring.metrics import metrics

Status = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
ACTIVE: tuple[Status, ...] = ("queued", "in_progress")
_ID = re.compile(r"^video_[0-9a-f]{32}$")


class JobCancelled(Exception):
    """Raised inside a stage when its job was cancelled: the stage stops between steps."""


class QueueFull(Exception):
    """Too many active jobs: the caller answers 503 with Retry-After."""


class StageSpan(BaseModel):
    """When a stage worked on the job, and on which replica (shows the pipelining)."""

    stage: str
    replica: str
    start: float
    end: float


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """A video job, in the OpenAI videos API shape plus what this cluster adds."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Status = "queued"
    progress: int = 0  # percent: denoising steps done / total, across both experts
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    size: str  # "WxH"
    seconds: str
    prompt: str
    error: JobError | None = None
    # Additions to the OpenAI shape
    request: dict[str, Any]
    steps_done: int = 0
    steps_total: int
    timings: dict[str, float] = {}  # seconds per stage, plus queue wait
    trace: list[StageSpan] = []
    cache: dict[str, bool | None] = {}  # cache level -> hit; None: the level did not apply
    matched_template: dict[str, Any] | None = None  # approximate match: {template, similarity}
    physics: dict[str, Any] | None = None  # physics-plausibility score and subscores
    started_at: float | None = None
    created: float  # precise creation time, for the queue wait and ordering
    stage: str | None = None  # the stage working on it now (None: queued or finished)
    retries: int = 0  # re-runs after a stage's replica died
    owner: str | None = None  # hash of the API key that created it; only that key sees it
    runner: str | None = None  # the ingress replica running it (heartbeats to the store)
    stage_since: float | None = None  # when the current stage started, or the last one ended

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def template(self) -> str:
        """The template label of metrics: named, approximately matched, or none."""
        return self.request.get("template") or (self.matched_template or {}).get("template") or "none"


def new_job_id() -> str:
    """128 random bits: not guessable, and safe as a storage key."""
    return f"video_{secrets.token_hex(16)}"


def valid_job_id(job_id: str) -> bool:
    return bool(_ID.match(job_id))


def video_key(job_id: str, attempt: int = 0) -> str:
    """The job's mp4; a physics retry's candidate has its own until one is chosen."""
    return f"videos/{job_id}.mp4" if attempt == 0 else f"videos/{job_id}.retry{attempt}.mp4"


class JobStore:
    def __init__(self, store: OutputStore, stage_timeout: float | None = None, runner_lost: float | None = None):
        self.store = store
        self.stage_timeout, self.runner_lost = stage_timeout, runner_lost
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._heartbeats: dict[str, float] = {}  # ingress replica -> last heartbeat
        self._started = time.time()
        for key in store.keys("jobs"):
            data = store.read(key)
            if data:
                job = Job.model_validate_json(data)
                self._jobs[job.id] = job

    # -- the watchdog: no job stays active forever ------------------------------------

    def heartbeat(self, runner: str) -> None:
        self._heartbeats[runner] = time.time()

    def check(self, now: float | None = None) -> list[str]:
        """Fail the active jobs whose stage overran its timeout, that sat between stages as
        long (their next call was lost), or whose ingress replica stopped heartbeating (it
        died with the job's orchestration). Returns their ids."""
        now = time.time() if now is None else now
        failed = []
        for job in [j for j in self._jobs.values() if j.active]:
            since = now - (job.stage_since or now)
            if self.stage_timeout and job.stage and since > self.stage_timeout:
                failed.append(job.id)
                self.fail(job.id, "stage_timeout", f"stage {job.stage} did not finish within {self.stage_timeout:g} s")
            elif self.stage_timeout and job.status == "in_progress" and not job.stage and since > self.stage_timeout:
                # Between stages a job waits milliseconds: this one's next call got lost in the cluster.
                failed.append(job.id)
                self.fail(job.id, "stalled", f"no stage started within {self.stage_timeout:g} s after the last one "
                          f"finished ({job.trace[-1].stage if job.trace else 'none'}); submit it again")
            elif self.runner_lost and job.runner:
                # A store restarted since has heard from no one yet: give runners the grace too.
                seen = self._heartbeats.get(job.runner, max(self._started, job.created))
                if now - seen > self.runner_lost:
                    failed.append(job.id)
                    self.fail(job.id, "ingress_lost",
                              f"the ingress replica running this job stopped (no heartbeat for {self.runner_lost:g} s); "
                              "submit it again")
        return failed

    # -- queries ---------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(
        self, after: str | None = None, limit: int = 20, order: str = "desc", owner: str | None = None
    ) -> tuple[list[Job], bool]:
        jobs = [j for j in self._jobs.values() if j.owner == owner]
        jobs.sort(key=lambda j: (j.created, j.id), reverse=order == "desc")
        if after is not None:
            ids = [j.id for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        return jobs[:limit], len(jobs) > limit

    def count_active(self) -> int:
        return sum(1 for j in self._jobs.values() if j.active)

    def is_cancelled(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is None or job.status == "cancelled"

    # -- lifecycle -------------------------------------------------------------------

    def create(
        self, request: GenerationRequest, model_id: str, steps_total: int, max_active: int | None = None,
        matched_template: dict[str, Any] | None = None, owner: str | None = None, runner: str | None = None,
        cache: dict[str, bool | None] | None = None,
    ) -> Job:
        now = time.time()
        job = Job(
            id=new_job_id(),
            model=model_id,
            created_at=int(now),
            created=now,
            size=f"{request.width}x{request.height}",
            seconds=f"{request.num_frames / request.fps:g}",
            prompt=request.prompt,
            request=request.model_dump(),
            steps_total=steps_total,
            matched_template=matched_template,
            owner=owner,
            runner=runner,
            cache=cache or {},
        )
        with self._lock:
            if max_active is not None and self.count_active() >= max_active:
                raise QueueFull(f"{max_active} jobs are already queued or in progress")
            self._jobs[job.id] = job
            self._save(job)
            self._publish()
        return job

    def stage_started(self, job_id: str, stage: str) -> None:
        """Raises JobCancelled if the job was cancelled while it waited for this stage."""
        with self._lock:
            job = self._live(job_id)
            job.stage, job.stage_since = stage, time.time()
            if job.status == "queued":
                job.status = "in_progress"
                job.started_at = time.time()
                job.timings["queue"] = job.started_at - job.created
                self._save(job)
                metrics.observe("queue", job.timings["queue"], model=job.model)
                self._publish()

    def step_done(self, job_id: str, expert: str = "", steps: int = 1) -> None:
        """Denoising steps finished. Raises JobCancelled to stop the stage."""
        with self._lock:
            job = self._live(job_id)
            self._add_steps(job, steps, expert)

    def stage_done(
        self, job_id: str, stage: str, start: float, end: float, replica: str = "", steps: int = 0,
        expert: str = "", cache: dict[str, bool | None] | None = None, spans: list[tuple[str, float, float]] = (),
    ) -> None:
        """A stage finished: its span and sub-spans (the decoder's mp4 and score), the denoising
        steps it had not reported yet and the cache levels it used, in one call."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if job.stage == stage:
                job.stage, job.stage_since = None, time.time()  # between stages: watched too
            if steps and job.active:
                self._add_steps(job, steps, expert)
            job.cache.update(cache or {})
            # A stage's timing is its own time, without the parts timed on their own, so the
            # timings add up to the wall time as the in-process Pipeline's do; the trace keeps
            # the whole span (the replica was busy for all of it).
            own = (end - start) - sum(finish - begin for _, begin, finish in spans)
            for name, begin, finish in ((stage, start, end), *spans):
                job.trace.append(StageSpan(stage=name, replica=replica, start=begin, end=finish))
                seconds = own if name == stage else finish - begin
                job.timings[name] = job.timings.get(name, 0.0) + seconds
                metrics.observe("stage", seconds, stage=name, model=job.model)
            self._save(job)

    def retrying(self, job_id: str) -> None:
        """A stage's replica died under the job: it runs again from the start."""
        with self._lock:
            job = self._live(job_id)
            job.retries += 1
            job.steps_done = job.progress = 0
            job.stage, job.stage_since = None, time.time()
            self._save(job)

    def add_steps(self, job_id: str, steps: int) -> None:
        """A physics retry re-runs the low-noise phase: more steps to make progress over."""
        with self._lock:
            self._live(job_id).steps_total += steps

    def scored(self, job_id: str, physics: dict[str, Any]) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.physics = physics
                self._save(job)

    def complete(self, job_id: str) -> Job | None:
        return self._finish(job_id, "completed")

    def fail(self, job_id: str, code: str, message: str) -> Job | None:
        return self._finish(job_id, "failed", error=JobError(code=code, message=message))

    def cancel(self, job_id: str) -> Job | None:
        """Cancel an active job (its stages stop at their next step); None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.active:
                job.status = "cancelled"
                job.completed_at = int(time.time())
                self._save(job)
                self._finished(job)
            return job

    def delete(self, job_id: str) -> bool:
        """Delete a finished job and its video. Active jobs must be cancelled first."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.active:
                return False
            del self._jobs[job_id]
            self.store.delete(f"jobs/{job_id}.json")
            self.store.delete(video_key(job_id))
            return True

    # -- helpers ---------------------------------------------------------------------

    def _live(self, job_id: str) -> Job:
        """The job, while it may still run: raises JobCancelled once it is cancelled or has
        ended otherwise (e.g. failed by the watchdog), so its stages stop."""
        job = self._jobs.get(job_id)
        if job is None or not job.active:
            raise JobCancelled(job_id)
        return job

    @staticmethod
    def _add_steps(job: Job, steps: int, expert: str) -> None:
        job.steps_done = min(job.steps_done + steps, job.steps_total)
        job.progress = int(100 * job.steps_done / max(job.steps_total, 1))
        metrics.inc("steps", steps, expert=expert, model=job.model)

    def _finish(self, job_id: str, status: Status, error: JobError | None = None) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return job  # cancelled meanwhile: cancellation wins
            job.status, job.error, job.stage = status, error, None
            job.completed_at = int(time.time())
            if status == "completed":
                job.progress, job.steps_done = 100, job.steps_total
            job.timings["total"] = time.time() - job.created
            self._save(job)
            self._finished(job)
            return job

    def _finished(self, job: Job) -> None:
        metrics.observe("job", time.time() - job.created, status=job.status, template=job.template, model=job.model)
        if job.status == "completed" and job.physics is not None:  # one observation per completed video
            metrics.observe("physics", job.physics["score"], template=job.template, model=job.model)
            for name, value in job.physics["subscores"].items():
                if value is not None:
                    metrics.observe("subscore", value, subscore=name, template=job.template, model=job.model)
        self._publish()

    def _publish(self) -> None:
        for status in ACTIVE:
            metrics.set("in_flight", sum(1 for j in self._jobs.values() if j.status == status), status=status)

    def _save(self, job: Job) -> None:
        self.store.write(f"jobs/{job.id}.json", json.dumps(job.model_dump(), ensure_ascii=False).encode())
