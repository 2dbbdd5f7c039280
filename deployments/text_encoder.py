"""The `TextEncoder` Serve deployment: the text encoder stage (stages/text_encoder.py) per replica."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from contract.messages import Cancelled, TemplateMatch
from contract.request import GenerationRequest
from contract.settings import Settings
from deployments.reporting import JobReporter
from stages.checkpoint import Checkpoint
from stages.text_encoder import PromptEmbeddings, TextEncoder


@serve.deployment(name="TextEncoder")
class TextEncoderDeployment:
    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.encoder = TextEncoder(Checkpoint.from_settings(settings), LatentCache.from_settings(settings))
        self.templates = settings.templates()
        self.jobs = jobs

    def encode(
        self, job_id: str, request: GenerationRequest, base_prompt: bool = False
    ) -> PromptEmbeddings | Cancelled:
        """The request's prompt, or (for a template's high-noise phase) its base prompt."""
        reporter = JobReporter(self.jobs, job_id)

        def work() -> PromptEmbeddings:
            text = request.base_prompt if base_prompt else request.prompt
            embeddings = self.encoder(text, request.negative_prompt, request.classifier_free_guidance, request.cache)
            if not base_prompt:
                reporter.cache("embeddings", embeddings.cache_hit if self.encoder.cache and request.cache else None)
            return embeddings

        return reporter.run("encode_base" if base_prompt else "encode", work)

    def closest_template(self, prompt: str) -> TemplateMatch | None:
        """The template whose base prompt is most like `prompt` (approximate match)."""
        name, similarity = self.encoder.closest_template(prompt, self.templates)
        return None if name is None else TemplateMatch(template=name, similarity=round(similarity, 4))
