"""The one stage contract: a `JobState` in, the same state out, with the stage's part filled in.

The base class does what every stage does around its work, once: it passes a cancelled job on
untouched, asks whether the job still wants the stage, times it (the state keeps its time and
span), and tells who listens, through `StageEvents`: the stage-latency metric everywhere; on
Serve the job store's progress too (deployments/reporting.py).
"""

from __future__ import annotations

import time
from typing import ClassVar

from contract.jobs import JobCancelled
from contract.messages import StageSpan
from monitoring.metrics import metrics
from stages.job_state import JobState


class StageEvents:
    """What a stage tells about its job while it runs; by default only the stage-latency metric."""

    replica: str = ""  # where the stage runs (the trace's spans name it)

    def started(self, stage: str, state: JobState) -> bool:
        """The stage starts; False when the job was cancelled (or ended) meanwhile."""
        return True

    def step(self, index: int) -> None:
        """A denoising step is done (progress); may raise `JobCancelled`."""

    def done(self, stage: str, state: JobState, seconds: dict[str, float], model: str) -> None:
        """The stage is done with `state` (which it may still note things in); `seconds`: its own
        time and that of each part it timed on its own."""
        for name, value in seconds.items():
            metrics.observe("stage", value, stage=name, model=model)


NO_EVENTS = StageEvents()


class Stage:
    """A stage of the job: `run` is its work; `__call__` the contract every executor calls."""

    name: ClassVar[str]
    model_id: str = ""  # the model's id: the metrics' label

    def __call__(self, state: JobState, events: StageEvents = NO_EVENTS, attempt: int | None = None) -> JobState:
        """`attempt`: the state (after the high-noise phase) starts repair attempt `attempt` here."""
        if state.cancelled:  # cancelled upstream: passed on as it is
            return state
        if attempt is not None:
            state = state.for_attempt(attempt)
        state = state.copy()
        if not events.started(self.name, state):
            return state.copy(cancelled=True)
        parts = len(state.trace)
        start = time.time()
        try:
            state = self.run(state, events)
        except JobCancelled:
            return state.copy(cancelled=True)
        end = time.time()
        # Its own time: without the parts it timed on their own (the decoder's mp4 and score), so
        # that a job's timings add up to its wall time.
        own = (end - start) - sum(span.end - span.start for span in state.trace[parts:])
        state.timings[self.name] = own
        state.trace.insert(parts, StageSpan(stage=self.name, replica=events.replica, start=start, end=end))
        for span in state.trace[parts + 1 :]:
            span.replica = events.replica
        seconds = {self.name: own, **{span.stage: span.end - span.start for span in state.trace[parts + 1 :]}}
        events.done(self.name, state, seconds, self.model_id)
        return state

    def run(self, state: JobState, events: StageEvents) -> JobState:
        """The stage's work on `state` (a copy of the caller's: the stage may change it)."""
        raise NotImplementedError
