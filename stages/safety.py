"""Prompt filter: runs at validation, before any compute, on every text a request will use
(the prompt, the negative prompt, each template slot and the filled-in prompt), for HTTP,
CLI and batch rows alike. Text is matched on a skeleton (after UTS #39): look-alike letters
read as the letters they stand for, and everything that is not a letter or digit (fillers,
symbols, emoji, punctuation) gone, so the usual disguises do not walk around it
(tests/test_safety.py keeps a list of them)."""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache
from pathlib import Path

import yaml

from contract.errors import FieldError
from contract.settings import Settings

BLOCKLIST = Path(__file__).with_name("safety.yaml")
CONFUSABLES = Path(__file__).parent / "unicode" / "confusables.txt"  # see unicode/SOURCE.md
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK = re.compile(f"[{_CJK_RANGES}]")
# Between the characters of a CJK term: anything but another CJK character, up to three ("斩x首").
_CJK_GAP = f"[^{_CJK_RANGES}]{{0,3}}"
# Letters that the Unicode table (13.0) does not list but that pass for Latin ones.
_EXTRA_LOOKALIKES = {"\u13b4": "b", "\u0565": "e"}  # Cherokee LE, Armenian ECH
# Letters that render as nothing: Hangul fillers are letters (Lo) to Unicode, so not dropped as symbols.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")
_SMALL_CAPITAL = re.compile(r"LATIN LETTER SMALL CAPITAL ([A-Z])$")
_LEET = str.maketrans("013457@$", "oieastas")
# Traditional forms of the characters in the block list: the filter reads both scripts.
_TRADITIONAL = str.maketrans("斬頭殺製彈襲擊兒體穢殘敎爆裸殺", "斩头杀制弹袭击儿体秽残教爆裸杀")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ments", "ment", "ions", "ion", "ers", "er", "ed", "es", "s", "ic", "e")


@cache
def _confusables() -> dict[str, str]:
    """Each confusable character and its prototype, from the Unicode table."""
    table = {}
    for line in CONFUSABLES.read_text(encoding="utf-8-sig").splitlines():
        source, _, rest = line.partition(";")
        if source.strip() and not source.startswith("#"):
            table[chr(int(source, 16))] = "".join(chr(int(c, 16)) for c in rest.split(";")[0].split())
    return table


@lru_cache(maxsize=4096)
def _latin(char: str) -> str:
    """The ASCII letters a non-ASCII letter passes for, or the letter itself. ASCII is left
    alone: the table's folds within it (m -> rn, l -> I) would make ordinary words collide."""
    if char.isascii() or not char.isalpha():
        return char
    if char in _EXTRA_LOOKALIKES:
        return _EXTRA_LOOKALIKES[char]
    if small := _SMALL_CAPITAL.match(unicodedata.name(char, "")):
        return small.group(1).lower()
    # A lowercase letter may look like a small capital (Cyrillic "к", "т"): then its capital is the match.
    for form in (char, char.upper()):
        prototype = unicodedata.normalize("NFKC", _confusables().get(form, form)).casefold()
        if prototype.isascii() and prototype.isalpha():
            # The table's "l" stands for any upright stroke (l, I, 1, |): a capital one is an I.
            return "i" if prototype == "l" and char.isupper() else prototype
    return char


def normalize(text: str) -> str:
    """The text's skeleton, as the filter compares it: compatibility forms (NFKC), accents and
    invisible characters dropped, look-alike letters read as the Latin ones they pass for,
    case folded, digits and signs inside words as letters (leetspeak),
    traditional characters as simplified, then everything but letters, digits and spaces
    removed, and letters spelt out one by one joined."""
    # Look-alikes before case folding: capital Greek nu passes for N, small nu for v.
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(_latin(c) for c in text if unicodedata.category(c) not in ("Cf", "Mn", "Me") and c not in _FILLERS)
    text = unicodedata.normalize("NFKC", text).casefold().translate(_TRADITIONAL)
    # Digits and signs inside a word of letters are letters in disguise ("p0rn"); numbers stay.
    text = re.sub(r"\S*[a-z]\S*", lambda m: m.group().translate(_LEET), text)
    text = "".join(c if c.isalnum() or c.isspace() else "" for c in text)
    # "b e h e a d i n g": four or more single letters in a row are one word.
    text = re.sub(r"(?<!\w)(?:[a-z]\s){3,}[a-z](?!\w)", lambda m: re.sub(r"\s", "", m.group()), text)
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
        return _CJK_GAP.join(re.escape(c) for c in term if not c.isspace())
    *words, last = term.split()
    # Words of a phrase may be run together or split ("bomb making", "bombmaking").
    body = r"\s*".join([*(re.escape(w) for w in words), re.escape(_stem(last)) + r"[a-z]{0,6}"])
    return rf"(?<![^\W\d_]){body}(?![^\W\d_])"


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
