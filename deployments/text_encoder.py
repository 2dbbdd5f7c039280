"""The `TextEncoder` Serve deployment: the encode stage (stages/stage_list.py, on
stages/text_encoder.py) per replica."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from contract.messages import TemplateMatch
from contract.settings import Settings
from deployments.reporting import JobReporter
from stages.checkpoint import Checkpoint
from stages.job_state import JobState
from stages.stage_list import EncodePrompt
from stages.text_encoder import TextEncoder


@serve.deployment(name="TextEncoder")
class TextEncoderDeployment:
    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.encoder = TextEncoder(Checkpoint.from_settings(settings), LatentCache.from_settings(settings))
        self.stage = EncodePrompt(self.encoder)
        self.templates = settings.templates()
        self.jobs = jobs

    def run(self, state: JobState, attempt: int | None = None) -> JobState:
        """The request's prompt embedded (and a template's base prompt)."""
        return self.stage(state, JobReporter(self.jobs, state.job_id), attempt)

    def closest_template(self, prompt: str) -> TemplateMatch | None:
        """The template whose base prompt is most like `prompt` (approximate match)."""
        name, similarity = self.encoder.closest_template(prompt, self.templates)
        return None if name is None else TemplateMatch(template=name, similarity=round(similarity, 4))
