"""Job records: queued -> in_progress -> completed | failed | cancelled.

The job store (stages/job_store.py) keeps them; everything else reads them in
this shape, which is also the OpenAI videos API's job object plus what this cluster adds.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

from pydantic import BaseModel

from contract.messages import PhysicsResult, StageSpan, TemplateMatch
from contract.request import GenerationRequest

Status = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
ACTIVE: tuple[Status, ...] = ("queued", "in_progress")
_ID = re.compile(r"video_[0-9a-f]{32}")


class JobCancelled(Exception):
    """Raised inside a stage's process when its job was cancelled (or ended otherwise): the
    stage stops between steps. It never crosses a deployment: the stage answers the job's state
    marked cancelled."""


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
    # Expert forwards a denoising step takes: 2 with classifier-free guidance (the prompt and the
    # negative prompt), 1 without (guidance 1, as a distilled adapter samples).
    forwards_per_step: int = 2
    timings: dict[str, float] = {}  # seconds per stage, plus queue wait
    trace: list[StageSpan] = []
    cache: dict[str, bool | None] = {}  # cache level -> hit; None: the level did not apply
    matched_template: TemplateMatch | None = None  # approximate match
    physics: PhysicsResult | None = None  # physics-plausibility score and subscores
    started_at: float | None = None
    created: float  # precise creation time, for the queue wait and ordering
    stage: str | None = None  # the stage working on it now (None: queued or finished)
    retries: int = 0  # re-runs after a stage's replica died
    owner: str | None = None  # hash of the API key that created it; only that key sees it
    runner: str | None = None  # the ingress replica running it (heartbeats to the store)
    stage_since: float | None = None  # when its stages last reported (the watchdog's clock)
    store_calls: int = 0  # job-store calls made for it: create, its stages' reports, its end

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def template(self) -> str:
        """The template label of metrics: named, approximately matched, or none."""
        matched = self.matched_template.template if self.matched_template else None
        return self.request.get("template") or matched or "none"


def new_job_id() -> str:
    """128 random bits: not guessable, and safe as a storage key."""
    return f"video_{secrets.token_hex(16)}"


def valid_job_id(job_id: str) -> bool:
    return bool(_ID.fullmatch(job_id))


def video_key(job_id: str, attempt: int = 0) -> str:
    """The job's mp4; a physics retry's candidate has its own until one is chosen."""
    return f"videos/{job_id}.mp4" if attempt == 0 else f"videos/{job_id}.retry{attempt}.mp4"


def latent_key(job_id: str, attempt: int = 0) -> str:
    """The job's final latent, kept so that a final of the same shot can start from it (`from`)."""
    return f"videos/{job_id}.latent" if attempt == 0 else f"videos/{job_id}.retry{attempt}.latent"


class JobCreate(BaseModel):
    """Ingress -> job store: record a new job, unless `max_active` jobs are already active."""

    request: GenerationRequest
    model_id: str
    steps_total: int
    max_active: int | None = None
    matched_template: TemplateMatch | None = None
    owner: str | None = None  # hash of the caller's API key
    runner: str | None = None  # the ingress replica that runs it
    cache: dict[str, bool | None] = {}  # cache levels known at creation (the result cache)


class Admission(BaseModel):
    """Job store -> ingress: the new job, or why there is no room for it (503, not an error)."""

    job: Job | None = None
    refused: str | None = None

    @property
    def accepted(self) -> bool:
        return self.job is not None
