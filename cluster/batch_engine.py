"""What every batch engine answers for a row: its `Outcome`, in the job record's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class EngineError(RuntimeError):
    """The engine cannot run at all (no cluster, no Serve app)."""


@dataclass
class Outcome:
    """One row's result, in the job record's shape whichever engine made it."""

    status: str  # completed | failed
    job: dict[str, Any] = field(default_factory=dict)  # request, timings, cache, physics, model, id
    mp4: bytes | None = None
    error_code: str | None = None
    error: str | None = None

    @classmethod
    def failed(cls, code: str, message: str) -> Outcome:
        return cls("failed", error_code=code, error=message)
