"""Read a clip of this world back from its frames: setting, the object's colour and shape, its motion, the camera.

Used to judge generated videos (`bench/quality.py`) and checked against the renderer's ground
truth (tests/test_world.py). It knows the world's palettes, nothing of the model.

- setting: the median colour of the top and bottom rows, nearest setting palette;
- object: pixels far from their row's background (the row's median over frames and columns)
  and near one of the object colours; the largest blob per frame;
- colour: the object pixels' median colour, nearest object colour;
- shape: whether the blob fills the corners of its bounding box (a square does, a disc does not);
- camera: the background's horizontal shift between frames (phase correlation of the ground);
- motion: the blob's centroid, the camera's shift taken out, classified by rules on its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from world.render import PALETTES
from world.vocabulary import COLORS

BACKGROUND_DISTANCE = 55.0  # RGB distance from the row's background that may be the object
COLOR_DISTANCE = 110.0  # at most this far from an object colour
BOX_CORNERS = 0.5  # share of the bounding box's corners (outside its inscribed ellipse) filled: a box
STILL = 0.04  # frame heights: less displacement than this is no motion
LIFT = 0.06  # frame heights: a rise larger than this is a bounce or a throw
MIN_AREA = 0.006  # of the frame: smaller blobs are texture or noise (the objects cover 0.025-0.045)
PAN = 0.04  # frame heights of background shift over the clip that count as a pan
MAX_STEP = 3  # px of background shift between two frames that the camera search covers


@dataclass
class Reading:
    setting: str
    color: str | None
    object: str | None
    motion: str | None
    camera: str
    found: float  # fraction of frames where the object was found
    displacement: float  # the object's largest distance from its start, frame heights (camera removed)
    track: np.ndarray = field(repr=False)  # (T, 2) centroid in pixels, NaN where not found
    shift: np.ndarray = field(repr=False)  # (T,) cumulative background shift in pixels (+: content moves right)
    height: int = 0  # of the frames, in pixels (positions in frame heights are track / height)

    @property
    def static(self) -> bool:
        return self.displacement < STILL

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("setting", "color", "object", "motion", "camera", "found")} | {
            "displacement": round(self.displacement, 4)
        }


def _setting(frames: np.ndarray) -> str:
    h = frames.shape[1]
    top = np.median(frames[:, : max(1, h // 8)].reshape(-1, 3), 0)
    bottom = np.median(frames[:, -max(1, h // 8) :].reshape(-1, 3), 0)

    def cost(name):
        sky, _, ground = PALETTES[name]
        return np.linalg.norm(top - sky) + np.linalg.norm(bottom - ground)

    return min(PALETTES, key=cost)


def _object_masks(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    background = np.median(f, axis=(0, 2), keepdims=True)  # one colour per row
    far = np.linalg.norm(f - background, axis=-1) > BACKGROUND_DISTANCE
    palette = np.array(list(COLORS.values()), np.float32)
    near = np.linalg.norm(f[..., None, :] - palette, axis=-1).min(-1) < COLOR_DISTANCE
    masks = np.zeros(far.shape, bool)
    for i, m in enumerate(far & near):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        if count > 1:
            biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            if stats[biggest, cv2.CC_STAT_AREA] >= MIN_AREA * m.shape[0] ** 2:
                masks[i] = labels == biggest
    return masks


def _shift(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Cumulative horizontal shift of the background in pixels (+: the content moves right).

    Between each pair of frames, the sub-pixel shift that best maps one onto the other, searched
    over +-MAX_STEP px, with the object's columns (and so its shadow) left out of the comparison.
    """
    t, h, w = masks.shape
    gray = frames.astype(np.float32).mean(-1)
    columns = masks.any(1)  # (T, W): columns the object touches
    margin = max(2, w // 16)
    columns = np.array([np.convolve(c, np.ones(2 * margin + 1), "same") > 0 for c in columns])
    candidates = np.linspace(-MAX_STEP, MAX_STEP, 8 * MAX_STEP * 2 + 1)
    valid = slice(MAX_STEP + 1, w - MAX_STEP - 1)
    x = np.arange(w)[valid]
    steps = [0.0]
    for i in range(t - 1):
        a, b = gray[i][:, valid], gray[i + 1]
        keep = ~(columns[i] | columns[i + 1])[valid]
        if keep.sum() < w // 4:
            steps.append(0.0)
            continue
        errors = []
        for s in candidates:
            # b(x + s) equals a(x) when the content moved right by s (linear interpolation).
            lo = np.floor(s).astype(int)
            f = s - lo
            shifted = b[:, x + lo] * (1 - f) + b[:, x + lo + 1] * f
            errors.append(np.mean((shifted[:, keep] - a[:, keep]) ** 2))
        steps.append(float(candidates[int(np.argmin(errors))]))
    return np.cumsum(steps)


def _motion(track: np.ndarray, shift: np.ndarray, h: int) -> tuple[str | None, float]:
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < max(3, len(track) // 2):
        return None, 0.0
    idx = np.arange(len(track))
    x = np.interp(idx, idx[ok], track[ok, 0]) - shift  # world x in pixels
    y = np.interp(idx, idx[ok], track[ok, 1])
    x, height = x / h, (y.max() - y) / h  # frame heights; height above the lowest point
    displacement = float(np.hypot(x - x[0], height - height[0]).max())
    dx = x[-1] - x[0]
    if displacement < STILL:
        return "stays still", displacement
    if np.ptp(height) < LIFT:
        return ("rolls right" if dx > 0 else "rolls left"), displacement
    rise_first = height[: len(height) // 2].max() - height[0]
    if rise_first > LIFT and abs(dx) > 0.1:
        return "is thrown", displacement
    landed = int(np.argmax(height < 0.02))  # first frame on the ground
    rebound = height[landed:].max() if landed else 0.0
    if rise_first > LIFT or rebound > LIFT * 0.75:
        return "bounces", displacement
    return "falls", displacement


def _corner_fill(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> float | None:
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    if min(x1 - x0, y1 - y0) < 4:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    u = (xx - (x0 + x1) / 2) / ((x1 - x0) / 2)
    v = (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
    corners = np.hypot(u, v) > 1.1
    return float(mask[y0:y1, x0:x1][corners].mean()) if corners.any() else None


def read_clip(frames: np.ndarray) -> Reading:
    """Read a clip: frames (T, H, W, 3) uint8 RGB."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h = frames.shape[:2]
    setting = _setting(frames)
    masks = _object_masks(frames)
    found = masks.reshape(t, -1).any(1)
    track = np.full((t, 2), np.nan)
    fills = []
    for i in np.flatnonzero(found):
        ys, xs = np.nonzero(masks[i])
        track[i] = xs.mean() + 0.5, ys.mean() + 0.5
        fill = _corner_fill(masks[i], xs, ys)
        if fill is not None:
            fills.append(fill)
    color = obj = None
    if found.any():
        pixels = frames[masks]
        median = np.median(pixels, 0)
        color = min(COLORS, key=lambda c: np.linalg.norm(median - np.array(COLORS[c])))
        if fills:
            obj = "box" if np.median(fills) > BOX_CORNERS else "ball"
    shift = _shift(frames, masks)
    camera = "static"
    if abs(shift[-1]) / h > PAN:
        camera = "pans left" if shift[-1] > 0 else "pans right"
    motion, displacement = _motion(track, shift, h)
    return Reading(setting, color, obj, motion, camera, float(found.mean()), displacement, track, shift, h)


def shot_difference(first: Reading, second: Reading) -> dict:
    """How far two readings of one shot at the same frame count are apart (e.g. a preview and its
    final): whether colour, object and motion read the same, and the tracked object's distance
    frame by frame, in frame heights (centroids scaled to each clip's height), over the frames
    where both found it."""
    if len(first.track) != len(second.track):
        raise ValueError(f"frame counts differ: {len(first.track)} and {len(second.track)}")
    both = ~np.isnan(first.track).any(1) & ~np.isnan(second.track).any(1)
    distance = np.linalg.norm(first.track[both] / first.height - second.track[both] / second.height, axis=1)
    return {
        "color": first.color == second.color,
        "object": first.object == second.object,
        "motion": first.motion == second.motion,
        "path": float(distance.mean()) if both.any() else float("nan"),  # mean over frames, frame heights
        "path_max": float(distance.max()) if both.any() else float("nan"),
        "tracked": float(both.mean()),
    }
