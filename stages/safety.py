"""Prompt filter: runs at validation, before any compute, on every text a request will use
(the prompt, the negative prompt, each template slot and the filled-in prompt), for HTTP,
CLI and batch rows alike. Text is normalised first, so the usual disguises (zero-width
characters, look-alike letters, spelt-out letters, inflections, spaces between CJK
characters) do not walk around it (tests/test_safety.py keeps a list of them)."""

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
# Letters that look like Latin ones (Cyrillic, Greek) and digits and signs written for letters.
_LOOKALIKES = str.maketrans("аеорсхуіјѕкмтвнαοορτυνκιεχ", "aeopcxyijskmtbhaooptuvkiex")
_LEET = str.maketrans("013457@$", "oieastas")
# Traditional forms of the characters in the block list: the filter reads both scripts.
_TRADITIONAL = str.maketrans("斬頭殺製彈襲擊兒體穢殘敎爆裸殺", "斩头杀制弹袭击儿体秽残教爆裸杀")
_SEPARATORS = r"[\s\-_.·・,，、*/|]*"  # what may be put between the letters of a blocked word
_SUFFIXES = ("ations", "ation", "ings", "ing", "ments", "ment", "ions", "ion", "ers", "er", "ed", "es", "s", "ic", "e")


def normalize(text: str) -> str:
    """The text as the filter compares it: compatibility forms and case folded (NFKC,
    casefold), invisible format characters (zero-width spaces, soft hyphens) dropped,
    every dash a "-", accents stripped, look-alike letters and leetspeak read as the
    letters they stand for, letters spelt out one by one joined, traditional characters
    read as simplified."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(
        "-" if unicodedata.category(c) == "Pd" or c == "\u2212" else c
        for c in unicodedata.normalize("NFKD", text)
        if unicodedata.category(c) not in ("Cf", "Mn")
    )
    text = text.translate(_LOOKALIKES).translate(_TRADITIONAL)
    # Digits and signs inside a word of letters are letters in disguise ("p0rn"); numbers stay.
    text = re.sub(r"\S*[a-z]\S*", lambda m: m.group().translate(_LEET), text)
    # "b e h e a d i n g", "b.e.h.e.a.d": four or more single letters in a row are one word.
    text = re.sub(r"(?<!\w)(?:[a-z][\s.\-_*]){3,}[a-z](?!\w)", lambda m: re.sub(r"[\s.\-_*]", "", m.group()), text)
    return " ".join(text.split())


def _stem(word: str) -> str:
    """The word without its inflection, so that every form of it matches ("beheading" ->
    "behead": beheads, beheaded, beheadings); a stem keeps at least four letters."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _pattern(term: str) -> str:
    term = normalize(term)
    if _CJK.search(term):  # no spaces between words: match anywhere, whatever is put between characters
        return _SEPARATORS.join(re.escape(c) for c in term if not c.isspace())
    *words, last = term.split()
    # Words of a phrase may be run together or split by any separator ("bomb-making", "bombmaking").
    body = _SEPARATORS.join([*(re.escape(w) for w in words), re.escape(_stem(last)) + r"[a-z]{0,6}"])
    return rf"(?<![a-z]){body}(?![a-z])"


class ContentFilter:
    def __init__(self, categories: dict[str, list[str]]):
        self.patterns = {
            category: re.compile("|".join(_pattern(t) for t in terms))
            for category, terms in categories.items()
            if terms
        }

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
