"""A stage deployment's view of its job: start and end of the stage, progress, cancellation.

Every stage deployment (text encoder, experts, decoder) wraps its work in
`JobReporter.run`, which asks the job store whether the job still wants it, times it, and
reports it in one `StageReport`. A cancelled job stops its stage between steps and the
stage answers `Cancelled`: an expected outcome, returned, not raised across the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.jobs import JobCancelled
from contract.messages import Cancelled, StageReport, StageSpan

T = TypeVar("T")


class JobReporter:
    REPORT_SECONDS = 0.25  # progress at most this often: each call costs the compute threads

    def __init__(self, jobs: DeploymentHandle, job_id: str, expert: str = ""):
        self.jobs, self.job_id, self.expert = jobs, job_id, expert
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._last_step = None
        self._unreported = 0
        self._reported_at = time.monotonic()
        self._parts: list[StageSpan] = []
        self._cache: dict[str, bool | None] = {}

    def run(self, stage: str, work: Callable[[], T], *inputs: Any) -> T | Cancelled:
        """`work()` as the job's `stage`, unless the job was cancelled upstream (an input is
        `Cancelled`), while it waited, or while it ran."""
        if (cancelled := Cancelled.among(*inputs)) is not None:
            return cancelled
        if not self.jobs.stage_started.remote(self.job_id, stage).result():
            return Cancelled(job_id=self.job_id)
        start = time.time()
        try:
            result = work()
        except JobCancelled:
            return Cancelled(job_id=self.job_id)
        # Waited for, so the record is complete before the next stage reports.
        self.jobs.stage_done.remote(
            StageReport(
                job_id=self.job_id,
                stage=stage,
                start=start,
                end=time.time(),
                replica=self.replica,
                steps=self._unreported,
                expert=self.expert,
                cache=self._cache,
                parts=self._parts,
            )
        ).result()
        return result

    def part(self, name: str, start: float, end: float) -> None:
        """A part of the current stage timed on its own (the decoder's mp4 and score)."""
        self._parts.append(StageSpan(stage=name, start=start, end=end))

    def cache(self, level: str, hit: bool | None) -> None:
        """A cache level the current stage used (None: it did not apply)."""
        self._cache[level] = hit

    def step(self, _index: int) -> None:
        # Progress goes out without waiting; the previous report's answer (long back by now)
        # says whether the job still runs, so a cancellation stops the phase within two reports.
        self._unreported += 1
        if time.monotonic() - self._reported_at < self.REPORT_SECONDS:
            return
        steps, self._unreported, self._reported_at = self._unreported, 0, time.monotonic()
        previous, self._last_step = self._last_step, self.jobs.step_done.remote(self.job_id, self.expert, steps)
        if previous is not None and not previous.result():
            raise JobCancelled(self.job_id)
