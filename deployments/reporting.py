"""A stage deployment's view of its job: the `StageEvents` a Serve replica's stages report to
the job store (start, progress, end, cache notes) and learn a cancellation from.

A stage (stages/stage.py) asks `started` before its work (False: the job was cancelled
meanwhile), sends progress every `REPORT_SECONDS` without waiting, and reports its end in one
`StageReport`. A cancelled job stops its stage between steps; the stage answers the state
marked cancelled: an expected outcome, returned, not raised across the cluster.
"""

from __future__ import annotations

import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.jobs import JobCancelled
from contract.messages import StageReport, StageSpan
from stages.stage import StageEvents


class JobReporter(StageEvents):
    REPORT_SECONDS = 0.25  # progress at most this often: each call costs the compute threads

    def __init__(self, jobs: DeploymentHandle, job_id: str, expert: str = ""):
        self.jobs, self.job_id, self.expert = jobs, job_id, expert
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._last_step = None
        self._unreported = 0
        self._reported_at = time.monotonic()
        self._parts: list[StageSpan] = []

    def started(self, stage: str) -> bool:
        return self.jobs.stage_started.remote(self.job_id, stage).result()

    def part(self, name: str, start: float, end: float) -> None:
        self._parts.append(StageSpan(stage=name, start=start, end=end))

    def done(self, stage: str, start: float, end: float, cache: dict[str, bool | None], model: str) -> None:
        # Waited for, so the record is complete before the next stage reports.
        self.jobs.stage_done.remote(
            StageReport(
                job_id=self.job_id,
                stage=stage,
                start=start,
                end=end,
                replica=self.replica,
                steps=self._unreported,
                expert=self.expert,
                cache=cache,
                parts=self._parts,
            )
        ).result()

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
