"""Typed messages between stages, deployments and the job store.

Everything that crosses a deployment boundary is one of these (or a request, a job record,
an embedding or a denoising state), never a positional argument list or a loose dict.
Expected outcomes travel as values: a stage whose job was cancelled answers the job's state
marked cancelled, the job store answers a full queue with a refused `Admission`
(contract/jobs.py), so neither shows up in the logs as a traceback.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class StageSpan(BaseModel):
    """When a stage (or a part of it) worked on a job, and on which replica."""

    stage: str
    replica: str = ""
    start: float
    end: float


class StageProgress(BaseModel):
    """A stage's word on its job, sent without waiting: the stage it is in (a job's first word marks
    it in progress) and the denoising steps done since the last word."""

    job_id: str
    stage: str
    steps: int = 0
    expert: str = ""  # the metric label of the expert whose steps these are


class JobTrace(BaseModel):
    """What a job's stages did, gathered in its state as it went and recorded with its end: seconds
    per stage (each its own, without the parts timed on their own), every span, cache levels used."""

    timings: dict[str, float] = {}
    trace: list[StageSpan] = []
    cache: dict[str, bool | None] = {}  # level -> hit; None: the level did not apply


class PhysicsAttempt(BaseModel):
    attempt: int
    seed: int
    score: float
    dynamics: float | None = None  # how much its scene moves: a repair must not buy its score with stillness


class PhysicsResult(BaseModel):
    """`monitoring.physics.score_video`'s result, plus the repair loop's attempts."""

    model_config = ConfigDict(extra="allow")  # notes, details, frames, fps: whatever the scorer adds

    score: float
    subscores: dict[str, float | None] = {}
    dynamics: float | None = None
    violations: list[dict[str, Any]] = []  # {"kind", "frames": [first, last], "track"}
    attempts: list[PhysicsAttempt] = []

    @classmethod
    def of(cls, scored: dict[str, Any]) -> PhysicsResult:
        return cls.model_validate(scored)


class TemplateMatch(BaseModel):
    """A free-form prompt close enough to a template's base prompt to share its high-noise phase."""

    template: str
    similarity: float


class Video(BaseModel):
    """A decoded, encoded and scored video: its mp4 in the output store (`key`, on Serve) or
    in hand (`mp4`, in process). `attempt` > 0 is a repair candidate."""

    attempt: int = 0
    seed: int
    physics: PhysicsResult
    key: str | None = None
    mp4: bytes | None = None
