"""Captions of a clip in English and Chinese, in several phrasings.

A phrasing is a sentence frame; the attribute words come from `world.vocabulary`. The
training set uses `TRAIN` frames; `HELD_OUT` frames are never trained on, so the quality
benchmark can ask in words the model has not seen in that order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from world.vocabulary import EN, ZH

EN_FRAMES = (
    "a {color} {object} {motion} {setting}",
    "the {color} {object} {motion} {setting}",
    "{setting}, a {color} {object} {motion}",
    "a video of a {color} {object} that {motion} {setting}",
    "one {color} {object} {motion} {setting}",
    # held out from training
    "there is a {color} {object} that {motion} {setting}",
    "{setting}: one {color} {object}, it {motion}",
    "watch a {color} {object} as it {motion} {setting}",
)
ZH_FRAMES = (
    "{color}的{object}在{setting}{motion}",
    "一个{color}的{object}在{setting}{motion}",
    "在{setting}，{color}的{object}{motion}",
    "{setting}有一个{color}的{object}{motion}",
    "视频里，{color}的{object}在{setting}{motion}",
    # held out from training
    "画面中，一个{color}{object}在{setting}{motion}",
    "看，{color}的{object}正在{setting}{motion}",
    "{setting}，一个{color}的{object}{motion}",
)
TRAIN_FRAMES = 5  # the first five of each language
SLOTS = ("color", "object", "motion", "setting", "camera")
WORDINGS = (0b00000, 0b11111, 0b01010, 0b10101)  # every wording of every slot, in four captions


@dataclass(frozen=True)
class Phrasing:
    language: str  # "en" | "zh"
    frame: int  # index into EN_FRAMES / ZH_FRAMES
    wording: int  # bit k picks the wording of the k-th slot (color, object, motion, setting, camera)

    @property
    def held_out(self) -> bool:
        return self.frame >= TRAIN_FRAMES


def caption(attrs: dict[str, str], phrasing: Phrasing) -> str:
    """The caption of a clip with attributes `attrs` (color, object, motion, setting, camera)."""
    table, frames = (EN, EN_FRAMES) if phrasing.language == "en" else (ZH, ZH_FRAMES)

    def word(slot: str) -> str:
        options = table[slot][attrs[slot]]
        return options[(phrasing.wording >> SLOTS.index(slot)) % len(options)]

    text = frames[phrasing.frame].format(**{slot: word(slot) for slot in ("color", "object", "motion", "setting")})
    camera = word("camera")
    if phrasing.language == "en":
        text = re.sub(r"\ba (?=[aeiou])", "an ", text)
        return f"{text}, {camera}" if camera else text
    return f"{text}，{camera}" if camera else text


def phrasings(language: str, held_out: bool = False) -> list[Phrasing]:
    """Every (frame, wording) pair of one language, trained-on or held-out."""
    frames = range(TRAIN_FRAMES, len(EN_FRAMES)) if held_out else range(TRAIN_FRAMES)
    return [Phrasing(language, f, w) for f in frames for w in WORDINGS]


def training_captions(attrs: dict[str, str]) -> list[str]:
    """All training captions of a clip: every trained frame and wording, both languages."""
    return sorted({caption(attrs, p) for lang in ("en", "zh") for p in phrasings(lang)})


def random_caption(attrs: dict[str, str], rng: np.random.Generator, held_out: bool = False) -> str:
    options = phrasings(str(rng.choice(["en", "zh"])), held_out)
    return caption(attrs, options[rng.integers(len(options))])


def words() -> tuple[list[str], list[str]]:
    """Every English word and every Chinese word the captions use (for the tokenizer)."""
    en, zh = set(), set()
    for table in EN.values():
        for phrases in table.values():
            for phrase in phrases:
                en.update(phrase.split())
    for frame in EN_FRAMES:
        en.update(w.strip(",.:") for w in frame.split() if "{" not in w)
    for table in ZH.values():
        for phrases in table.values():
            zh.update(phrases)
    for frame in ZH_FRAMES:
        zh.update(p for p in _zh_literals(frame) if p)
    return sorted(w for w in en if w), sorted(zh)


def _zh_literals(frame: str) -> list[str]:
    return [p for p in re.split(r"\{[a-z]+\}|[，：。、 ]", frame) if p]
