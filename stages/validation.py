"""Request validation with everything it needs: the settings' limits and templates (the
request model checks those), the content filter and the tokenizer's token count.

HTTP, the CLI and batch rows all turn input into a `GenerationRequest` here, so a prompt
is refused the same way, with the same 400-style error, whichever way it came in, and
before any compute.
"""

from __future__ import annotations

import inspect
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from contract.errors import FieldError, RequestInvalid
from contract.request import GenerationRequest, VideoCreateBody
from contract.settings import Settings
from stages.adapter_store import AdapterStore
from stages.checkpoint import Checkpoint
from stages.prompt_text import count_tokens
from stages.safety import ContentFilter

# What a final of a shot takes from its preview, and what its body may set.
SHOT_FIELDS = {
    "prompt",
    "negative_prompt",
    "template",
    "slots",
    "seed",
    "guidance_scale",
    "guidance_scale_2",
    "flow_shift",
    "lora",
    "num_frames",
    "fps",
}
# `lora` too: a fast preview may be finished by the base low-noise expert (`lora: []`).
FINAL_FIELDS = {"from", "from_video", "preset", "size", "steps", "num_inference_steps", "model", "cache", "lora"}


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
        # (never more than the model's sequence length: past it the encoder would cut the text)
        limit = min(self.settings.limits.max_prompt_tokens, self._checkpoint.max_sequence_length)
        tokens = count_tokens(self.tokenizer, text)
        if tokens > limit:
            raise FieldError(field, f"{field} must be at most {limit} tokens, got {tokens}")

    def request(self, **fields: Any) -> GenerationRequest:
        """Request fields (canonical names) -> the request that will run; RequestInvalid names the field."""
        try:
            return self._runnable(
                GenerationRequest.build(self.settings, self.check_prompt, self.adapters.resolve, **fields)
            )
        except ValidationError as e:
            raise RequestInvalid.from_validation(e) from None

    def _runnable(self, request: GenerationRequest) -> GenerationRequest:
        """What only the served model can say: whether its scheduler takes the request's flow
        shift, and whether its step cache has steps enough to reuse."""
        step_cache = self.settings.step_cache
        if step_cache.kind != "none" and request.num_inference_steps < step_cache.min_steps:
            raise RequestInvalid.of(
                "num_inference_steps",
                f"num_inference_steps {request.num_inference_steps}{_from_adapter(request, 'num_inference_steps')}: "
                f"this server's step cache ({step_cache.kind}) reuses work between steps and needs at least "
                f"{step_cache.min_steps}; ask for more steps, or use a server without step_cache",
            )
        if request.flow_shift is None:
            return request
        scheduler = self._checkpoint.scheduler_class()
        if "flow_shift" not in inspect.signature(scheduler).parameters:
            where = _from_adapter(request, "flow_shift")
            raise RequestInvalid.of("flow_shift", f"flow_shift{where}: this model's {scheduler.__name__} has none")
        return request

    def final_of(self, preview: GenerationRequest, data: Any, preview_id: str) -> GenerationRequest:
        """The request of a final of `preview`'s shot (`from`): the preview's prompt, seed, guidance,
        adapters, frames and fps, at the final preset's (or the body's) size and steps. The body may
        name other adapters (the final runs only the low-noise expert): their sampling settings, or
        the preset's, replace what the preview's adapters set."""
        if not isinstance(data, dict):
            raise RequestInvalid.of("body", "request body must be a JSON object or a form")
        data = dict(data)
        if "prompt" in data and (not str(data["prompt"]).strip() or data["prompt"] == preview.prompt):
            del data["prompt"]  # the openai SDK always sends one: blank, or the shot's own, says nothing new
        for name in data:
            if name not in FINAL_FIELDS:
                raise RequestInvalid.of(
                    name, f"the final of a shot keeps its preview's {name}; give only {', '.join(sorted(FINAL_FIELDS))}"
                )
        # What the preview's adapters filled in is theirs, not the shot's: the final's adapters fill it again.
        shot = preview.model_dump(include=SHOT_FIELDS - set(preview.sampling_from or ()), exclude_none=True)
        if preview.template is not None:
            shot.pop("prompt")  # the template fills it in again
        if preview.lora:  # by name and scale: resolved again against the store (it may have changed)
            shot["lora"] = [{"name": a.name, "scale": a.scale} for a in preview.lora]
        fields = {**shot, "preset": "final", **data, "from": preview_id}
        fields.pop("from_video", None)
        return self.body(fields)

    def body(self, data: Any) -> GenerationRequest:
        """An HTTP body (or a batch row) in the API's shape -> the request that will run."""
        return self._runnable(
            VideoCreateBody.parse(data).to_request(
                self.settings, self.model_id, self.check_prompt, self.adapters.resolve
            )
        )


def _from_adapter(request: GenerationRequest, field: str) -> str:
    """ " (from adapter 'fast')" where an adapter's sampling settings set `field`, else ""."""
    source = (request.sampling_from or {}).get(field)
    return f" (from adapter {source!r})" if source else ""
