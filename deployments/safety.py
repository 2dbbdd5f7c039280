"""Prompt filter: runs at validation, before any compute, on the prompt a request will use
(a template's filled-in prompt included), for HTTP, CLI and batch rows alike."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import yaml

from contract.errors import FieldError
from contract.settings import Settings

BLOCKLIST = Path(__file__).with_name("safety.yaml")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def normalize(text: str) -> str:
    """NFKC folds full-width and compatibility forms; casefold ignores case in any script."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class ContentFilter:
    def __init__(self, categories: dict[str, list[str]]):
        self.patterns = {}
        for category, terms in categories.items():
            parts = []
            for term in terms:
                words = [re.escape(w) for w in normalize(term).split()]
                body = r"[\s\-_]+".join(words)  # "bomb making" also catches "bomb-making"
                # Word boundaries only make sense for scripts that separate words with spaces.
                parts.append(body if _CJK.search(term) else rf"(?<!\w){body}(?!\w)")
            if parts:
                self.patterns[category] = re.compile("|".join(parts))

    @classmethod
    def from_settings(cls, settings: Settings) -> ContentFilter | None:
        """The configured filter (the shipped block list unless one is set), or None when off."""
        if not settings.safety.enabled:
            return None
        return load_filter(str(settings.safety.blocklist_file or BLOCKLIST))

    @classmethod
    def from_file(cls, path: str | Path) -> ContentFilter:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        categories = {}
        for name, languages in (data.get("categories") or {}).items():
            terms = [t for ts in (languages or {}).values() for t in ts or []]
            categories[name] = terms
        return cls(categories)

    def category(self, text: str) -> str | None:
        """The first category `text` falls in, or None."""
        text = normalize(text)
        return next((c for c, pattern in self.patterns.items() if pattern.search(text)), None)

    def check(self, text: str, field: str = "prompt") -> None:
        category = self.category(text)
        if category is not None:
            raise FieldError(
                field,
                f"{field} was rejected by the content filter (category: {category})",
                code="content_policy_violation",
            )


@lru_cache
def load_filter(path: str) -> ContentFilter:
    return ContentFilter.from_file(path)
