"""The job store: every job record of the cluster, in memory, copied to the output store.

A thread of its own writes each changed record to the `OutputStore`, so a restarted store (or
ingress) reloads them: a stage's progress never waits for the object store (changes to one
record coalesce into one write), and only the call that accepts or ends a job waits, bounded,
for that job's record. A job costs it four calls at most on the hot path: `create`; the stages'
coalesced `report`s (the first marks the job in progress), whose answers tell a stage that its
job was cancelled (`False`: nothing is raised across the cluster); `complete` (or `fail`), which
brings the job's trace, timings and cache notes. Its watchdog (`check`) fails active jobs that
nothing runs any more. Served by
`JobStoreDeployment` in deployments/job_store.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

from contract.errors import error_summary
from contract.jobs import ACTIVE, Admission, Job, JobCreate, JobError, Status, latent_key, new_job_id, video_key
from contract.messages import JobTrace, PhysicsResult, StageProgress
from contract.storage import OutputStore
from monitoring.metrics import metrics
from monitoring.physics import VIOLATION_KINDS

logger = logging.getLogger(__name__)


class JobStore:
    def __init__(
        self,
        store: OutputStore,
        stage_timeout: float | None = None,
        runner_lost: float | None = None,
        write_delay: float = 0.0,
        durable_timeout: float = 30.0,
    ):
        """`write_delay`: how long a changed record waits before it is written (changes to it in
        the meantime join that write); `durable_timeout`: the longest a new or ended job's call
        waits for its record to be written."""
        self.store, self.write_delay, self.durable_timeout = store, write_delay, durable_timeout
        self.stage_timeout, self.runner_lost = stage_timeout, runner_lost
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)  # the writer's wake-up, and flush()'s
        self._dirty: set[str] = set()  # ids whose record changed since it was last written
        self._deleted: dict[str, int] = {}  # ids whose record and files are to be deleted -> attempts
        self._writing: set[str] = set()  # ids of the records being written (or deleted) now
        # Deleted jobs' files deleted once more after a stage's time: a cancelled job's decode that
        # was still running when it was deleted writes its mp4 after the delete (id -> (attempts, when)).
        self._swept_again: dict[str, tuple[int, float]] = {}
        self._urgent = False
        self._jobs: dict[str, Job] = {}
        # queued or in progress, in order of creation: what the watchdog and the gauges look at
        self._active: dict[str, None] = {}
        self._heartbeats: dict[str, float] = {}  # ingress replica -> last heartbeat
        self._started = time.time()
        self.unreadable: list[str] = []  # records that did not parse, skipped (and left in place)
        metrics.zero("unreadable", store="jobs")
        for kind in VIOLATION_KINDS:
            metrics.zero("violations", kind=kind, engine="serve")
        for key in store.keys("jobs"):
            try:
                job = Job.model_validate_json(store.read(key) or b"")
            except (ValueError, OSError) as error:  # cut short, or the store could not read it
                logger.warning("job store: skipped unreadable record %s: %s", key, error_summary(error))
                self.unreadable.append(key)
                metrics.inc("unreadable", store="jobs")
                continue
            self._jobs[job.id] = job
            if job.active:
                self._active[job.id] = None
        self._publish()  # jobs in flight by status, from the first scrape
        threading.Thread(target=self._write_behind, name="job-records", daemon=True).start()

    # -- the watchdog: no job stays active forever ------------------------------------

    def heartbeat(self, runner: str) -> None:
        self._heartbeats[runner] = time.time()

    def check(self, now: float | None = None) -> list[str]:
        """Fail the active jobs whose stage overran its timeout, that sat between stages or
        queued as long (their next call was lost, or no one started them), or whose ingress
        replica stopped heartbeating (it died with the job's orchestration). Returns their ids."""
        now = time.time() if now is None else now
        with self._lock:
            due = {i: attempts for i, (attempts, when) in self._swept_again.items() if when <= now}
            for job_id in due:
                del self._swept_again[job_id]
            if due:
                self._deleted.update(due)
                self._written.notify_all()
        failed = []
        # A runner is lost when it is silent while others get through. When no heartbeat at all
        # has arrived for as long, the store is the one cut off (its process starved of CPU, its
        # calls queued behind others): it waits instead of failing every runner's jobs at once.
        heard = max(self._heartbeats.values(), default=None)
        others_heard = heard is not None and now - heard <= self.runner_lost
        for job in [j for i in list(self._active) if (j := self._jobs.get(i)) is not None and j.active]:
            silent = now - (job.stage_since or now)
            if self.stage_timeout and job.status == "in_progress" and silent > self.stage_timeout:
                # A stage reports at least at its start and every few steps: this one hung, or the
                # job's next call got lost in the cluster.
                failed.append(job.id)
                message = f"no word from its stages for {self.stage_timeout:g} s (last: {job.stage}); submit it again"
                self.fail(job.id, JobError(code="stage_timeout", message=message))
            elif self.stage_timeout and job.status == "queued" and now - job.created > self.stage_timeout:
                # Accepted, and no stage ever started: whatever was to run it is gone.
                message = f"not started within {self.stage_timeout:g} s of being accepted; submit it again"
                failed.append(job.id)
                self.fail(job.id, JobError(code="stalled", message=message))
            elif self.runner_lost and job.runner and others_heard:
                # A store restarted since has heard from no one yet: give runners the grace too.
                seen = self._heartbeats.get(job.runner, max(self._started, job.created))
                if now - seen > self.runner_lost:
                    failed.append(job.id)
                    message = (
                        f"the ingress replica running this job stopped (no heartbeat for {self.runner_lost:g} s); "
                        "submit it again"
                    )
                    self.fail(job.id, JobError(code="ingress_lost", message=message))
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
        return len(self._active)

    def is_cancelled(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is None or job.status == "cancelled"

    # -- lifecycle -------------------------------------------------------------------

    def create(self, new: JobCreate) -> Admission:
        """Record a job, or refuse it when `max_active` jobs are already active (a 503, not an error)."""
        now, request = time.time(), new.request
        job = Job(
            id=new_job_id(),
            model=new.model_id,
            created_at=int(now),
            created=now,
            size=f"{request.width}x{request.height}",
            seconds=f"{request.num_frames / request.fps:g}",
            prompt=request.prompt,
            request=request.model_dump(),
            steps_total=new.steps_total,
            forwards_per_step=2 if request.classifier_free_guidance else 1,
            matched_template=new.matched_template,
            owner=new.owner,
            runner=new.runner,
            cache=new.cache,
            store_calls=1,
        )
        with self._lock:
            if new.max_active is not None and self.count_active() >= new.max_active:
                return Admission(refused=f"{new.max_active} jobs are already queued or in progress")
            self._jobs[job.id] = job
            self._active[job.id] = None
            self._save(job, urgent=True)
            self._publish()
        self._durable(job.id)
        return Admission(job=job)

    def report(self, progress: StageProgress) -> bool:
        """A stage's word on its job: the stage it is in (the first word marks the job in progress)
        and the steps done since. False: the job was cancelled (or ended), stop the stage."""
        with self._lock:
            job = self._live(progress.job_id)
            if job is None:
                return False
            now = time.time()
            job.store_calls += 1
            job.stage, job.stage_since = progress.stage, now
            if job.status == "queued":
                job.status, job.started_at = "in_progress", now
                job.timings["queue"] = now - job.created
                metrics.observe("queue", job.timings["queue"], model=job.model)
                self._publish()
            if progress.steps:
                self._add_steps(job, progress.steps, progress.expert)
            self._save(job)
            return True

    def retrying(self, job_id: str) -> bool:
        """A stage's replica died under the job: it runs again from the start. False if the job
        was cancelled or ended meanwhile (that stands)."""
        with self._lock:
            job = self._live(job_id)
            if job is None:
                return False
            job.retries += 1
            job.steps_done = job.progress = 0
            job.stage, job.stage_since = None, time.time()
            self._save(job)
            return True

    def add_steps(self, job_id: str, steps: int) -> None:
        """A physics retry re-runs the low-noise phase: more steps to make progress over."""
        with self._lock:
            if (job := self._live(job_id)) is not None:
                job.steps_total += steps

    def complete(self, job_id: str, physics: PhysicsResult | None = None, trace: JobTrace | None = None) -> Job | None:
        """The job's video is written; `physics`, its score, and `trace`, what its stages did, in the
        same call."""
        return self._finish(job_id, "completed", physics=physics, trace=trace)

    def fail(self, job_id: str, error: JobError) -> Job | None:
        return self._finish(job_id, "failed", error=error)

    def interrupt_active(self, message: str) -> list[str]:
        """Fail every queued or running job as `interrupted` (the whole app is stopping); their ids."""
        with self._lock:
            active = [i for i in self._active if (job := self._jobs.get(i)) is not None and job.active]
        for job_id in active:
            self.fail(job_id, JobError(code="interrupted", message=message))
        return active

    def cancel(self, job_id: str) -> Job | None:
        """Cancel an active job (its stages stop at their next step); None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.active:
                job.status = "cancelled"
                job.completed_at = int(time.time())
                self._save(job, urgent=True)
                self._finished(job)
        if job is not None:
            self._durable(job_id)
        return job

    def delete(self, job_id: str) -> bool:
        """Delete a finished job, its record and every file of its attempts (videos, latents),
        answering once that is done (bounded like `create`): a restart cannot bring it back.
        Active jobs must be cancelled first."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.active:
                return False
            del self._jobs[job_id]
            attempts = 1 + int(job.request.get("max_retries") or 0)
            self._deleted[job_id] = attempts
            self._swept_again[job_id] = (attempts, time.time() + (self.stage_timeout or 0))
            self._urgent = True
            self._written.notify_all()
        self._durable(job_id)
        return True

    # -- helpers ---------------------------------------------------------------------

    def _live(self, job_id: str) -> Job | None:
        """The job while it may still run; None once it is cancelled or has ended otherwise
        (e.g. failed by the watchdog), so its stages stop."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.active else None

    @staticmethod
    def _add_steps(job: Job, steps: int, expert: str) -> None:
        job.steps_done = min(job.steps_done + steps, job.steps_total)
        job.progress = int(100 * job.steps_done / max(job.steps_total, 1))
        metrics.inc("steps", steps, expert=expert, model=job.model)

    def _finish(
        self,
        job_id: str,
        status: Status,
        error: JobError | None = None,
        physics: PhysicsResult | None = None,
        trace: JobTrace | None = None,
    ) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return job  # cancelled meanwhile: cancellation wins
            job.store_calls += 1
            job.status, job.error, job.stage = status, error, None
            if physics is not None:
                job.physics = physics
            if trace is not None:
                job.timings.update(trace.timings)
                job.trace, job.cache = trace.trace, {**job.cache, **trace.cache}
            job.completed_at = int(time.time())
            if status == "completed":
                job.progress, job.steps_done = 100, job.steps_total
            job.timings["total"] = time.time() - job.created
            self._save(job, urgent=True)
            self._finished(job)
        self._durable(job_id)
        return job

    def _finished(self, job: Job) -> None:
        self._active.pop(job.id, None)
        metrics.observe("job", time.time() - job.created, status=job.status, template=job.template, model=job.model)
        if job.status == "completed" and job.physics is not None:  # one observation per completed video
            metrics.physics(job.physics, job.template, job.model, engine="serve")
        self._publish()

    def _publish(self) -> None:
        counts = Counter(self._jobs[i].status for i in self._active)
        for status in ACTIVE:
            metrics.set("in_flight", counts[status], status=status)

    # -- the records' copies in the output store ---------------------------------------

    def _save(self, job: Job, urgent: bool = False) -> None:
        """Mark `job`'s record for the writer (call with the lock held). `urgent`: a new job or an
        ended one, written at once (a restart must never lose a job or its end); a stage's
        progress may wait `write_delay` for the next."""
        self._dirty.add(job.id)
        self._urgent |= urgent
        self._written.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every change so far is in the output store; False if `timeout` ran out."""
        with self._lock:
            return self._written.wait_for(lambda: not (self._dirty or self._deleted or self._writing), timeout)

    def _durable(self, job_id: str) -> None:
        """Wait (call without the lock) until `job_id`'s record as it is now is in the output store:
        a job accepted or ended is never lost by a restart. Bounded, so a store that is down slows
        this call only; its record is written when the store is back."""
        with self._lock:
            written = self._written.wait_for(
                lambda: job_id not in self._dirty and job_id not in self._deleted and job_id not in self._writing,
                self.durable_timeout,
            )
        if not written:
            logger.warning("job store: record %s not yet written after %g s", job_id, self.durable_timeout)

    def _write_behind(self) -> None:
        while True:
            with self._lock:
                self._written.wait_for(lambda: self._dirty or self._deleted)
                urgent, self._urgent = self._urgent, False
            if not urgent:
                time.sleep(self.write_delay)
            with self._lock:
                records = {i: self._record(self._jobs[i]) for i in self._dirty if i in self._jobs}
                deleted, self._dirty, self._deleted = self._deleted, set(), {}
                self._writing = set(records) | set(deleted)
            failed = self._write(records, deleted)
            with self._lock:
                self._writing = set()
                self._dirty |= failed.intersection(self._jobs)
                self._deleted |= {i: deleted[i] for i in failed if i in deleted}
                self._written.notify_all()
            if failed:
                time.sleep(1.0)  # the store is down or refusing: retry, without spinning

    def _write(self, records: dict[str, bytes], deleted: dict[str, int]) -> set[str]:
        """Write and delete; returns the ids that failed (kept for the next round)."""
        failed = set()
        for job_id, data in records.items():
            try:
                self.store.write(f"jobs/{job_id}.json", data)
            except Exception as error:  # any store error: keep the record, retry
                logger.warning("job store: writing record %s failed, will retry: %s", job_id, error_summary(error))
                failed.add(job_id)
        for job_id, attempts in deleted.items():
            try:
                self.store.delete(f"jobs/{job_id}.json")
                for attempt in range(attempts):
                    self.store.delete(video_key(job_id, attempt))
                    self.store.delete(latent_key(job_id, attempt))
            except Exception as error:
                logger.warning("job store: deleting %s failed, will retry: %s", job_id, error_summary(error))
                failed.add(job_id)
        return failed

    @staticmethod
    def _record(job: Job) -> bytes:
        return json.dumps(job.model_dump(mode="json"), ensure_ascii=False).encode()
