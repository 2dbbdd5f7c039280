"""The typed state of one job as it passes through the stages: each stage takes it and returns it
with its own part filled in. In process it is handed on as a value; on Serve it travels replica
to replica as a Ray object; on Ray Data it is a row's one column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.adapters import adapter_set_id, adapters_for
from contract.experts import ExpertKind
from contract.messages import StageSpan, Video
from contract.request import GenerationRequest

if TYPE_CHECKING:  # tensors: a state that holds none (the ingress's) unpickles without torch
    from stages.denoising import DenoisingState
    from stages.text_encoder import PromptEmbeddings


# Its repr names what it holds, never tensor values: asyncio, Ray and logs print states (a
# finished task's result, an error's arguments), and a tensor's repr reads every element.
@dataclass(repr=False)
class JobState:
    job_id: str
    request: GenerationRequest
    attempt: int = 0  # 0: the first video; n > 0: the n-th re-sample of the detail phase (a repair)
    embeddings: PromptEmbeddings | None = None  # of the request's prompt (and negative prompt)
    base_embeddings: PromptEmbeddings | None = None  # of a template's base prompt (template mode)
    boundary: DenoisingState | None = None  # after the high-noise phase: where a repair starts again
    final: DenoisingState | None = None  # after the low-noise phase
    source: Any = None  # the preview's final latent, for the final of its shot, when in hand
    video: Video | None = None  # decoded, encoded, scored
    frames: Any = None  # the decoded uint8 frames (T, H, W, 3), kept where the caller wants them
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (and the decoder's parts)
    cache: dict[str, bool | None] = field(default_factory=dict)  # cache level -> hit (None: not used)
    trace: list[StageSpan] = field(default_factory=list)  # when each stage (and part) ran, and where
    # The job's progress reports (Serve): steps a stage did not report yet, and when any stage last did,
    # so that the stages of one job, each in its own process, report as one coalesced stream.
    unreported_steps: int = 0
    last_report: float | None = None
    cancelled: bool = False  # the job was cancelled (or ended otherwise): the stages pass it on

    def __repr__(self) -> str:
        parts = ("embeddings", "base_embeddings", "boundary", "final", "source", "video", "frames")
        held = [name for name in parts if getattr(self, name) is not None]
        return (
            f"JobState({self.job_id!r}, attempt={self.attempt}, holds=[{', '.join(held)}], "
            f"timings={self.timings}, cache={self.cache}, cancelled={self.cancelled})"
        )

    @property
    def seed(self) -> int:
        """The seed of this attempt's video: the request's, or a repair's derived one."""
        return self.request.resample_seed(self.attempt) if self.attempt else self.request.seed

    @property
    def final_of_shot(self) -> bool:
        """The final of a previewed shot: its preview's high-noise phase stands."""
        return self.request.from_video is not None

    def adapter_set(self, expert: ExpertKind) -> str:
        """The request's adapters for `expert`, as one id ('' when none)."""
        return adapter_set_id(adapters_for(self.request.lora, expert))

    def copy(self, **changes: Any) -> JobState:
        """A new state (its dicts copied too): a stage never changes the state it was given."""
        copied = {"timings": dict(self.timings), "cache": dict(self.cache), "trace": list(self.trace)}
        return dataclasses.replace(self, **{**copied, **changes})

    def for_attempt(self, attempt: int) -> JobState:
        """This state (after the high-noise phase) as the start of repair attempt `attempt`: its
        timings and cache notes are the attempt's own from here on."""
        return dataclasses.replace(
            self, attempt=attempt, final=None, video=None, frames=None, timings={}, cache={}, trace=[]
        )

    def slim(self) -> JobState:
        """Without tensors: what goes back to whoever runs the job (the ingress, a batch driver)."""
        return self.copy(embeddings=None, base_embeddings=None, boundary=None, final=None, source=None)


def total_timings(attempts: list[JobState]) -> dict[str, float]:
    """Seconds per stage over a job's attempts (each repair's from the boundary on)."""
    total: dict[str, float] = {}
    for state in attempts:
        for stage, seconds in state.timings.items():
            total[stage] = total.get(stage, 0.0) + seconds
    return total
