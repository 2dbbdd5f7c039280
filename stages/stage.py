"""The one stage contract: a `JobState` in, the same state out, with the stage's part filled in.

The base class does what every stage does around its work, once: it passes a cancelled job on
untouched, asks whether the job still wants the stage, times it, and reports the time and the
stage's cache notes. Whoever runs the stage says who listens, through `StageEvents`: in process
and on Ray Data the metrics only; on Serve the job store (deployments/reporting.py).
"""

from __future__ import annotations

import time
from typing import ClassVar

from contract.jobs import JobCancelled
from monitoring.metrics import metrics
from stages.job_state import JobState


class StageEvents:
    """What a stage tells about its job while it runs; by default only the stage-latency metric."""

    def started(self, stage: str) -> bool:
        """The stage starts; False when the job was cancelled (or ended) meanwhile."""
        return True

    def step(self, index: int) -> None:
        """A denoising step is done (progress); may raise `JobCancelled`."""

    def part(self, name: str, start: float, end: float) -> None:
        """A part of the stage timed on its own (the decoder's mp4 and score)."""

    def done(self, stage: str, start: float, end: float, cache: dict[str, bool | None], model: str) -> None:
        metrics.observe("stage", end - start, stage=stage, model=model)


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
        if not events.started(self.name):
            return state.copy(cancelled=True)
        cache_before = dict(state.cache)
        start = time.time()
        try:
            state = self.run(state.copy(), events)
        except JobCancelled:
            return state.copy(cancelled=True)
        end = time.time()
        state.timings.setdefault(self.name, end - start)  # a stage that times its parts notes them itself
        notes = {level: hit for level, hit in state.cache.items() if cache_before.get(level, ...) != hit}
        events.done(self.name, start, end, notes, self.model_id)
        return state

    def run(self, state: JobState, events: StageEvents) -> JobState:
        """The stage's work on `state` (a copy of the caller's: the stage may change it)."""
        raise NotImplementedError
