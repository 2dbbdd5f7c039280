"""A stage deployment's word to the job store: the `StageEvents` of a Serve replica's stages.

A job's stages, each in its own replica, report as one coalesced stream, sent without waiting:
the text encoder's start is the job's first word (it marks the job in progress), the decoder's
start another; an expert sends a word (its stage, the steps done since) once it has worked
`serving.progress_seconds` since the job's last word, the clock travelling in the job's state
from stage to stage. A job whose phases are short (or compute nothing, as on the simulated
accelerator) costs two words: with `create` and `complete`, four calls. The
answer to a word, read when the next is sent, says whether the job still runs: a cancelled job
stops its expert between steps and the stage answers the state marked cancelled (an expected
outcome, returned, not raised across the cluster). Spans, timings and cache notes travel in the
state and reach the record with the job's end: no call of their own.
"""

from __future__ import annotations

import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.jobs import JobCancelled
from contract.messages import StageProgress
from stages.job_state import JobState
from stages.stage import StageEvents


class JobReporter(StageEvents):
    def __init__(self, jobs: DeploymentHandle, job_id: str, expert: str = "", every: float = 1.0):
        self.jobs, self.job_id, self.expert = jobs, job_id, expert
        self.every = every  # an expert's words at most this often (seconds of its work)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.stage = ""
        self._answer = None  # the last word's answer, read when the next word goes out
        self._unreported = 0
        self._reported_at: float | None = None
        self._stage_start = 0.0

    def started(self, stage: str, state: JobState) -> bool:
        self.stage, self._unreported, self._reported_at = stage, state.unreported_steps, state.last_report
        self._stage_start = time.time()
        # A stage without steps (the text encoder: the job's first word; the decoder) says that it
        # has begun; an expert says so with its steps.
        if self._reported_at is None or not self.expert:
            self._send()
        return True

    def step(self, _index: int) -> None:
        self._unreported += 1
        if self._due():
            self._send()

    def done(self, stage: str, state: JobState, seconds: dict[str, float], model: str) -> None:
        super().done(stage, state, seconds, model)
        state.unreported_steps, state.last_report = self._unreported, self._reported_at

    def _due(self) -> bool:
        """Worked `every` seconds since the job's last word (a wait for this stage does not count)."""
        return time.time() - max(self._reported_at or 0.0, self._stage_start) >= self.every

    def _send(self) -> None:
        progress = StageProgress(job_id=self.job_id, stage=self.stage, steps=self._unreported, expert=self.expert)
        previous, self._answer = self._answer, self.jobs.report.remote(progress)
        self._unreported, self._reported_at = 0, time.time()
        if previous is not None and not previous.result():
            raise JobCancelled(self.job_id)
