"""Frames shown more than once: a frame-rate conversion, or a freeze.

A conversion shows some frames twice (20 to 25 fps: every fifth) or thrice (8 to 24) in a regular
pattern and loses nothing. A freeze holds a frame while the scene goes on unseen, then jumps to
where the scene got to. So a run of two or more held frames outside a regular pattern is a freeze;
a single repeat is taken for a conversion (one frame held once cannot be told from a 24 to 25 fps
conversion, whose repeats are a second apart). Conversions are taken out before scoring; a freeze
is a break at its frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REPEAT = 0.25  # a held pair changes less than this share of the pairs around it
REPEAT_LEVELS = 1.0  # ... by under this many 8-bit levels on average (compression noise)
STILL_SHARE = 0.001  # ... and with at most this share of its pixels changing by over CHANGED_LEVELS
CHANGED_LEVELS = 8.0  # a pixel changed by more than this has moved (compression noise stays under it)
PATTERN = 3  # holds of one length at a steady spacing, at least this many: a conversion


@dataclass
class Held:
    converted: list[int] = field(default_factory=list)  # repeated frames of a frame-rate conversion
    freezes: list[list[int]] = field(default_factory=list)  # [first held frame, first frame after the jump]


def _runs(still: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], still.astype(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _regular(holds: list[tuple[int, int]]) -> bool:
    """Holds of one length, spaced by a whole number of periods (to a frame; a repeat may go unseen
    in a still stretch): a frame-rate conversion's pattern."""
    if len(holds) < PATTERN or len({last - first for first, last in holds}) > 1:
        return False
    gaps = np.diff([first for first, _ in holds])
    period = int(gaps.min())
    if period < 2:
        return False
    off = gaps % period
    return bool(np.all((off <= 1) | (off >= period - 1)))


def held_frames(small: np.ndarray) -> Held:
    """Repeats and freezes of (T, h, w, 3) frames (small: the change per pair is all that is read)."""
    diff = np.abs(np.diff(small.astype(np.float32), axis=0))
    change = diff.mean(axis=(1, 2, 3))
    moved = (diff.max(-1) > CHANGED_LEVELS).mean(axis=(1, 2))
    n = len(change)
    holds = []
    for first, last in _runs((change < REPEAT_LEVELS) & (moved <= STILL_SHARE)):
        # Held while the frames on both sides change; a still stretch is the scene at rest, and one at
        # the clip's start or end cannot be told from it.
        if (
            0 < first
            and last + 1 < n
            and change[first : last + 1].max() < REPEAT * min(change[first - 1], change[last + 1])
        ):
            holds.append((first, last))
    out = Held()
    pattern = _regular(holds)
    for first, last in holds:
        if last > first and not pattern:
            out.freezes.append([first + 1, last + 2])
        else:
            out.converted += range(first + 1, last + 2)
    return out
