"""Prompt templates: named texts with slots, and the base prompt their requests share.

A template request's full prompt is the text filled with its slots; its base prompt is
the text filled with each slot's generic value. The high-noise expert (layout, motion)
runs once per base prompt; only the low-noise expert (detail) sees the full prompt.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, model_validator

from contract.errors import FieldError

DEFAULT_TEMPLATES = Path(__file__).with_name("templates.yaml")


class TemplateError(FieldError):
    """A template request that cannot be filled; `field` names the culprit."""


class Slot(BaseModel):
    base: str  # the generic value the shared base prompt uses
    default: str | None = None  # None: the request must fill it
    description: str = ""


class Template(BaseModel):
    name: str
    text: str
    slots: dict[str, Slot]
    seed: int = 0
    description: str = ""

    @model_validator(mode="after")
    def _slots_match_text(self) -> Template:
        named = {field for _, field, _, _ in string.Formatter().parse(self.text) if field}
        if named != set(self.slots):
            raise ValueError(f"template {self.name!r}: text names {sorted(named)}, slots are {sorted(self.slots)}")
        return self

    @property
    def base_prompt(self) -> str:
        return self.text.format(**{name: slot.base for name, slot in self.slots.items()})

    def fill(self, values: dict[str, str] | None) -> str:
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.slots))
        if unknown:
            raise TemplateError(
                f"slots.{unknown[0]}", f"not a slot of template {self.name!r}; its slots: {sorted(self.slots)}"
            )
        filled = {}
        for name, slot in self.slots.items():
            value = values.get(name, slot.default)
            if value is None or not str(value).strip():
                raise TemplateError(f"slots.{name}", f"required by template {self.name!r}")
            filled[name] = str(value)
        return self.text.format(**filled)


class TemplateRegistry:
    def __init__(self, templates: dict[str, Template]):
        self.templates = templates

    @classmethod
    def from_yaml(cls, path: str | Path) -> TemplateRegistry:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls({name: Template(name=name, **spec) for name, spec in data.items()})

    def get(self, name: str) -> Template:
        try:
            return self.templates[name]
        except KeyError:
            raise TemplateError("template", f"unknown template {name!r}; known: {sorted(self.templates)}") from None

    def public(self) -> list[dict]:
        """What `GET /v1/templates` shows."""
        return [
            {
                "name": t.name,
                "description": t.description,
                "text": t.text,
                "base_prompt": t.base_prompt,
                "seed": t.seed,
                "slots": {n: s.model_dump() for n, s in t.slots.items()},
            }
            for t in self.templates.values()
        ]


@lru_cache
def load_registry(path: str | None = None) -> TemplateRegistry:
    """The registry in `path` (None: the shipped templates.yaml), loaded once per file."""
    return TemplateRegistry.from_yaml(path or DEFAULT_TEMPLATES)
