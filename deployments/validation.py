"""Request validation with everything it needs: the settings' limits and templates (the
request model checks those), the content filter and the tokenizer's token count.

HTTP, the CLI and batch rows all turn input into a `GenerationRequest` here, so a prompt
is refused the same way, with the same 400-style error, whichever way it came in, and
before any compute.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic import ValidationError

from contract.errors import FieldError, RequestInvalid
from contract.request import GenerationRequest, VideoCreateBody
from contract.settings import Settings
from deployments.adapters import AdapterStore
from deployments.checkpoint import Checkpoint
from deployments.safety import ContentFilter
from deployments.text_encoder import count_tokens


class RequestValidator:
    def __init__(self, settings: Settings, checkpoint: Checkpoint):
        self.settings = settings
        self.model_id = checkpoint.model_id
        self.content_filter = ContentFilter.from_settings(settings)
        self._checkpoint = checkpoint

    @cached_property
    def tokenizer(self):
        return self._checkpoint.tokenizer()

    @cached_property
    def adapters(self) -> AdapterStore:
        """The LoRA adapters requests may name (`lora`), each checked against this model."""
        return AdapterStore.from_settings(self.settings, self._checkpoint)

    def check_prompt(self, text: str, field: str = "prompt") -> None:
        """The checks a text needs a model for: blocked terms, then the tokenizer's count (an
        over-long text is refused instead of silently cut at max_sequence_length)."""
        if self.content_filter is not None:
            self.content_filter.check(text, field)
        tokens, limit = count_tokens(self.tokenizer, text), self.settings.limits.max_prompt_tokens
        if tokens > limit:
            raise FieldError(field, f"{field} must be at most {limit} tokens, got {tokens}")

    def request(self, **fields: Any) -> GenerationRequest:
        """Request fields (canonical names) -> the request that will run; RequestInvalid names the field."""
        try:
            return GenerationRequest.build(self.settings, self.check_prompt, self.adapters.resolve, **fields)
        except ValidationError as e:
            raise RequestInvalid.from_validation(e) from None

    def body(self, data: Any) -> GenerationRequest:
        """An HTTP body (or a batch row) in the API's shape -> the request that will run."""
        return VideoCreateBody.parse(data).to_request(
            self.settings, self.model_id, self.check_prompt, self.adapters.resolve
        )
