"""The HTTP API's shapes (OpenAI videos API) and their mapping to a `GenerationRequest`.

The official `openai` SDK posts `multipart/form-data` with `seconds` as a string ("4")
and `size` as "WxH"; other clients post JSON. Both land in `VideoCreateBody`.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from cluster.config import Settings
from cluster.request import GenerationRequest, describe_errors


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request",
                 headers: dict[str, str] | None = None, errors: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers, self.errors = headers, errors

    def __reduce__(self):  # crosses Ray's process boundaries intact
        return (type(self), (self.status, self.message, self.param, self.code, self.headers, self.errors))

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body: dict[str, Any] = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        if self.errors:
            body["error"]["errors"] = self.errors
        return body


def invalid(error: ValidationError) -> ApiError:
    errors = describe_errors(error)
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    code = next((e["code"] for e in errors if "code" in e), "invalid_request")
    return ApiError(400, message, param=errors[0]["field"], code=code, errors=errors)


class VideoCreateBody(BaseModel):
    """`POST /v1/videos`: the OpenAI fields plus this cluster's generation settings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str | None = Field(None, description="What the video shows, in any language")
    template: str | None = Field(None, description="A template from GET /v1/templates, instead of a prompt")
    slots: dict[str, str] | None = Field(None, description="The template's slot values")
    cache: bool = Field(True, description="Use the latent cache")
    model: str | None = Field(None, description="Model id from GET /v1/models; default: the served model")
    size: str | None = Field(None, description="WxH in pixels, e.g. 128x128", examples=["128x128"])
    seconds: float | None = Field(None, gt=0, description="Duration; frames = seconds * fps rounded to 4k+1")
    num_frames: int | None = Field(None, description="Frame count (4k+1); instead of seconds")
    fps: int | None = None
    seed: int | None = None
    num_inference_steps: int | None = Field(None, validation_alias=AliasChoices("steps", "num_inference_steps"))
    guidance_scale: float | None = Field(None, validation_alias=AliasChoices("guidance", "guidance_scale"))
    guidance_scale_2: float | None = Field(None, validation_alias=AliasChoices("guidance_2", "guidance_scale_2"))
    negative_prompt: str | None = None
    preset: str | None = Field(None, description="preview or final")
    min_physics_score: float | None = Field(None, description="Re-sample the detail phase below this score")
    max_retries: int | None = Field(None, description="Re-samples at most (with min_physics_score)")

    def to_request(self, settings: Settings, model_id: str) -> GenerationRequest:
        if self.model not in (None, model_id):
            raise ApiError(400, f"model: unknown model {self.model!r}; this server serves {model_id!r}", "model",
                           "model_not_found")
        fields = self.model_dump(exclude={"model", "size", "seconds"}, exclude_none=True)
        if self.size is not None:
            try:
                width, height = (int(v) for v in self.size.lower().split("x"))
            except ValueError:
                raise ApiError(400, f"size: must be WxH, e.g. 128x128, got {self.size!r}", "size")
            fields.update(width=width, height=height)
        if self.seconds is not None:
            if self.num_frames is not None:
                raise ApiError(400, "seconds: give seconds or num_frames, not both", "seconds")
            preset = settings.presets.get(self.preset or settings.default_preset)
            fps = self.fps or (preset.fps if preset else 16)
            fields["num_frames"] = 4 * round(self.seconds * fps / 4) + 1
        try:
            return GenerationRequest.build(settings, **fields)
        except ValidationError as e:
            raise invalid(e) from None


def parse_create_body(data: Any) -> VideoCreateBody:
    """Validate a JSON object or a form as a `VideoCreateBody` (form values are strings)."""
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object or a form", "body")
    try:
        return VideoCreateBody.model_validate(data)
    except ValidationError as e:
        raise invalid(e) from None
