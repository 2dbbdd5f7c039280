"""Real camera footage, and violations made from it: the physics scorer's calibration and test set.

The clips (bench/footage/, sources and licences in its README) are plausible by construction. Each
is cut into windows of `WINDOW` frames; every window appears as it is and with each violation below
applied, so the same footage is seen plausible and violated:

- drop: `DROPPED` frames cut from the middle (everything moving jumps: a teleport);
- stutter: a frame held for `HELD` more frames, then the clip goes on where it had got to (a freeze
  and a jump);
- jump_cut: from the middle on, the footage `JUMP` frames later (the same shot, time skipped);
- vanish: what moves is pasted out (replaced by the still background) for a few frames, then back;
- flicker: the brightness alternates by +-`FLICKER` over a stretch;
- zoom: a stretch of frames scaled up by `ZOOM`, then back (a sudden change of size);
- rewind: a stretch in the middle played backwards (motion flips without a cause);
- reverse: the whole window played backwards (time runs the wrong way).

A violation that changes nothing visible (a drop or a reversal in a still stretch) is left out:
it cannot be seen, so it is no test; nor is one the clip has no frames for (a jump cut in its last
window). Clips are split: the scorer is tuned on `TUNING` and reported separately on `HELD_OUT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FOLDER = Path(__file__).with_name("footage")
TUNING = (
    "juggle_lawn",
    "parking_lot",
    "carphone",
    "mirror_lift",
    "dog_fetch",
    "cups_game",
    "bottles_lifted",
    "basketball_gym",
    "dolphins",
)
HELD_OUT = (
    "pancake_flip",
    "street_a",
    "coffee_pour",
    "blocks_topdown",
    "bed_jumping",
    "cars_from_above",
    "person_walks_in",
    "rollercoaster",
)
# Clips where something falls, is thrown or bounces: played backwards, each must score lower
FALLING = ("juggle_lawn", "pancake_flip", "dog_fetch", "basketball_gym", "bed_jumping", "coffee_pour")
WINDOW = 33  # frames, as the `final` preset makes
CROP = 0.7  # pans: a crop this share of the frame, held still or swept across it
DROPPED = 6
HELD = 3  # stutter: frames the held frame is shown for, beyond its own
JUMP = 12  # jump cut: frames skipped at the cut
FLICKER = 0.15
ZOOM = 1.3
VIOLATIONS = ("drop", "stutter", "jump_cut", "vanish", "flicker", "zoom", "rewind", "reverse")
VISIBLE = 0.01  # a violation must change this share of a frame's pixels by more than 25 levels


@dataclass
class Sample:
    clip: str
    start: int  # first frame of the window in the clip
    violation: str | None  # None: the footage as it is
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float

    @property
    def name(self) -> str:
        return f"{self.clip}@{self.start}:{self.violation or 'plausible'}"


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """(T, H, W, 3) uint8 RGB frames and the frame rate of a video file."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    return np.stack(frames), float(fps)


def _middle(t: int, length: int) -> slice:
    start = (t - length) // 2
    return slice(start, start + length)


def violate(frames: np.ndarray, kind: str, extra: np.ndarray | None = None) -> np.ndarray | None:
    """`frames` with the violation `kind`; `extra`: the clip's frames after them, which `drop` and
    `jump_cut` take from (None where there are too few)."""
    t = len(frames)
    out = frames.copy()
    if kind == "drop":
        if extra is None or len(extra) < DROPPED:
            return None
        whole = np.concatenate([frames, extra[:DROPPED]])
        cut = _middle(len(whole), DROPPED)
        return np.concatenate([whole[: cut.start], whole[cut.stop :]])
    if kind == "stutter":
        held = _middle(t, HELD + 1)
        out[held] = frames[held.start]
        return out
    if kind == "jump_cut":
        if extra is None or len(extra) < JUMP:
            return None
        whole = np.concatenate([frames, extra])
        middle = t // 2
        return np.concatenate([frames[:middle], whole[middle + JUMP : t + JUMP]])
    if kind == "vanish":
        background = np.median(frames, axis=0)
        stretch = _middle(t, max(3, t // 6))
        for i in range(stretch.start, stretch.stop):
            moving = np.abs(frames[i].astype(np.int16) - background).max(-1) > 25
            moving = cv2.dilate(moving.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            out[i][moving] = background[moving]
        return out
    if kind == "flicker":
        stretch = _middle(t, max(4, t // 3))
        for k, i in enumerate(range(stretch.start, stretch.stop)):
            gain = 1 + FLICKER * (1 if k % 2 else -1)
            out[i] = np.clip(frames[i].astype(np.float32) * gain, 0, 255).astype(np.uint8)
        return out
    if kind == "zoom":
        h, w = frames.shape[1:3]
        stretch = _middle(t, max(3, t // 5))
        ch, cw = round(h / ZOOM), round(w / ZOOM)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        for i in range(stretch.start, stretch.stop):
            out[i] = cv2.resize(frames[i][y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        return out
    if kind == "rewind":
        stretch = _middle(t, max(4, t // 3))
        out[stretch] = frames[stretch][::-1]
        return out
    if kind == "reverse":
        return frames[::-1].copy()
    raise ValueError(f"unknown violation {kind!r}; expected one of {', '.join(VIOLATIONS)}")


def crops(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same scene seen by a still camera (a fixed crop of `CROP` of the frame, centred) and by one
    panning across it (the crop swept from the left edge to the right over the clip, at sub-pixel steps)."""
    t, h, w, _ = frames.shape
    ch, cw = 2 * round(CROP * h / 2), 2 * round(CROP * w / 2)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    fixed = frames[:, y0 : y0 + ch, x0 : x0 + cw].copy()
    panned = np.stack(
        [
            cv2.warpAffine(
                f, np.float32([[1, 0, -(w - cw) * i / max(1, t - 1)], [0, 1, -y0]]), (cw, ch), flags=cv2.INTER_LINEAR
            )
            for i, f in enumerate(frames)
        ]
    )
    return fixed, panned


def visible(original: np.ndarray, violated: np.ndarray) -> bool:
    changed = np.abs(original.astype(np.int16) - violated.astype(np.int16)).max(-1) > 25
    return bool(changed.mean(axis=(1, 2)).max() >= VISIBLE)


def samples(clips: tuple[str, ...] = TUNING + HELD_OUT, window: int = WINDOW) -> Iterator[Sample]:
    """Every window of every clip, as it is and with each violation."""
    for name in clips:
        frames, fps = read_video(FOLDER / f"{name}.mp4")
        t = len(frames)
        size = min(window, t - DROPPED)
        for start in range(0, max(1, t - size - DROPPED + 1), size):
            part = frames[start : start + size]
            yield Sample(name, start, None, part, fps)
            for kind in VIOLATIONS:
                violated = violate(part, kind, frames[start + size : start + size + JUMP])
                if violated is not None and visible(part, violated):
                    yield Sample(name, start, kind, violated, fps)


def auc(plausible: list[float], violated: list[float]) -> float:
    """P(a plausible sample scores above a violated one), ties counting half."""
    if not plausible or not violated:
        return float("nan")
    p, v = np.asarray(plausible)[:, None], np.asarray(violated)[None, :]
    return float(((p > v).sum() + 0.5 * (p == v).sum()) / (p.size * v.size))
