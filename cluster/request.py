"""The generation request: one pydantic model shared by the CLI, HTTP and batch rows.

Unset fields come from the preset (`preview` / `final`, tiered generation) and the
settings; every value is checked against `Settings.limits`, and an invalid one fails
with an error naming the field and the allowed range.
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from cluster.config import Limits, Settings, get_settings
from cluster.errors import FieldError

MAX_SEED = 2**63 - 1


def _settings(info: ValidationInfo) -> Settings:
    return (info.context or {}).get("settings") or get_settings()


def _in_range(name: str, value, low, high):
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def describe_errors(error: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as `{field, message}` pairs (plus `code` when a check has a more
    specific one than invalid input), for CLI, HTTP and batch rows alike."""
    described = []
    for e in error.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # it knows the field (e.g. a template slot) better than loc
            described.append({"field": cause.field, "message": cause.message, **({"code": cause.code} if cause.code else {})})
        else:
            field = ".".join(str(p) for p in e["loc"]) or "request"
            described.append({"field": field, "message": e["msg"].removeprefix("Value error, ")})
    return described


def _check_prompt(prompt: str, settings: Settings) -> None:
    if not prompt.strip():
        raise FieldError("prompt", "prompt must not be blank")
    limit = settings.limits.max_prompt_chars
    if len(prompt) > limit:
        raise FieldError("prompt", f"prompt must be at most {limit} characters, got {len(prompt)}")
    if (content_filter := settings.content_filter()) is not None:
        content_filter.check(prompt)
    from deployments.text_encoder import count_prompt_tokens  # loads the tokenizer: import when needed

    tokens, limit = count_prompt_tokens(settings, prompt), settings.limits.max_prompt_tokens
    if tokens > limit:
        raise FieldError("prompt", f"prompt must be at most {limit} tokens, got {tokens}")


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, description="What the video shows; any language")
    negative_prompt: str | None = Field(None, description="What to steer away from; default from settings")
    preset: str | None = Field(None, description="Named settings bundle, e.g. 'preview' or 'final'")
    template: str | None = Field(None, description="A template name (GET /v1/templates), instead of a prompt")
    slots: dict[str, str] | None = Field(None, description="Values of the template's slots")
    base_prompt: str | None = Field(None, description="Set from the template: what the high-noise phase sees")
    height: int | None = Field(None, description="Pixels, a multiple of 16")
    width: int | None = Field(None, description="Pixels, a multiple of 16")
    num_frames: int | None = Field(None, description="Frames, with num_frames % 4 == 1")
    fps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = Field(None, description="CFG scale of the high-noise expert")
    guidance_scale_2: float | None = Field(None, description="CFG scale of the low-noise expert")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random when unset")
    cache: bool = Field(True, description="Use the latent cache (and, for templates, the shared high-noise phase)")
    min_physics_score: float | None = Field(
        None, ge=0, le=1, description="Below this physics score the low-noise phase is re-sampled (new seed)"
    )
    max_retries: int | None = Field(None, ge=0, description="Re-samples at most; default from settings")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _check_prompt(v, _settings(info))
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _settings(info).templates().get(v)  # raises, naming the known ones
        return v

    @field_validator("slots")
    @classmethod
    def _slots(cls, v: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        name = info.data.get("template")
        if v is not None and name is None:
            raise ValueError("slots need a template")
        if name is not None:
            _settings(info).templates().get(name).fill(v)  # raises, naming the slot
        return v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str | None, info: ValidationInfo) -> str | None:
        presets = _settings(info).presets
        if v is not None and v not in presets:
            raise ValueError(f"preset must be one of {sorted(presets)}, got {v!r}")
        return v

    @field_validator("height", "width")
    @classmethod
    def _side(cls, v: int | None, info: ValidationInfo) -> int | None:
        limits: Limits = _settings(info).limits
        high = limits.max_height if info.field_name == "height" else limits.max_width
        _in_range(info.field_name, v, limits.min_side, high)
        if v is not None and v % 16:
            raise ValueError(f"{info.field_name} must be a multiple of 16, got {v}")
        return v

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, v: int | None, info: ValidationInfo) -> int | None:
        _in_range("num_frames", v, 1, _settings(info).limits.max_frames)
        if v is not None and v % 4 != 1:
            raise ValueError(f"num_frames must be 4k+1 (e.g. 17, 33, 81), got {v}")
        return v

    @field_validator("fps")
    @classmethod
    def _fps(cls, v: int | None, info: ValidationInfo) -> int | None:
        limits = _settings(info).limits
        return _in_range("fps", v, limits.min_fps, limits.max_fps)

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _in_range("num_inference_steps", v, 1, _settings(info).limits.max_steps)

    @field_validator("guidance_scale", "guidance_scale_2")
    @classmethod
    def _guidance(cls, v: float | None, info: ValidationInfo) -> float | None:
        return _in_range(info.field_name, v, 0.0, _settings(info).limits.max_guidance)

    @model_validator(mode="after")
    def _fill_defaults(self, info: ValidationInfo) -> "GenerationRequest":
        """Resolve every unset field, so the request says exactly what will run."""
        settings = _settings(info)
        if self.template is not None:
            if self.prompt is not None:
                raise FieldError("prompt", "give a prompt or a template, not both")
            template = settings.templates().get(self.template)
            self.prompt = template.fill(self.slots)
            _check_prompt(self.prompt, settings)
            self.base_prompt = template.base_prompt
            if self.seed is None:
                self.seed = template.seed  # variants of one template share the high-noise phase
        elif self.prompt is None:
            raise FieldError("prompt", "a prompt (or a template) is required")
        else:
            self.base_prompt = None
        self.preset = self.preset or settings.default_preset
        preset = settings.presets[self.preset]
        for name in ("height", "width", "num_frames", "fps", "num_inference_steps"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        if self.guidance_scale is None:
            self.guidance_scale = settings.guidance_scale
        if self.guidance_scale_2 is None:
            self.guidance_scale_2 = settings.guidance_scale_2
        if self.negative_prompt is None:
            self.negative_prompt = settings.negative_prompt
        if self.max_retries is None:
            self.max_retries = settings.limits.default_physics_retries if self.min_physics_score is not None else 0
        elif self.max_retries > settings.limits.max_physics_retries:
            raise FieldError("max_retries", f"max_retries must be at most {settings.limits.max_physics_retries}")
        if self.seed is None:
            self.seed = secrets.randbelow(2**31)
        return self

    def matched_to(self, template) -> "GenerationRequest":
        """This free-form request sharing `template`'s high-noise phase (approximate match)."""
        return self.model_copy(update={"base_prompt": template.base_prompt, "seed": template.seed})

    def resample_seed(self, attempt: int) -> int:
        """The seed of re-sample `attempt` (1, 2, ...): derived, so a rerun repeats it."""
        return (self.seed + 1_000_003 * attempt) % MAX_SEED

    @property
    def template_mode(self) -> bool:
        """The high-noise phase runs on the template's base prompt, shared through the cache."""
        return self.base_prompt is not None and self.cache

    @property
    def classifier_free_guidance(self) -> bool:
        """As in WanPipeline: guidance (and the negative prompt) is on when scale > 1."""
        return self.guidance_scale > 1.0

    @classmethod
    def build(cls, settings: Settings | None = None, **fields) -> "GenerationRequest":
        """Validate `fields` against `settings` (default: the process settings)."""
        return cls.model_validate(fields, context={"settings": settings or get_settings()})
