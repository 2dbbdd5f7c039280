"""Moving objects, found and followed: background subtraction on camera-stabilised frames, then tracks.

Every frame is warped into the first frame's coordinates by the camera path; the per-pixel median
over the frames that saw a pixel is the background (a still scene, whatever the camera did).
Foreground: more than `FOREGROUND_LEVEL` from the background warped back, after each frame's global
brightness offset is removed (so flicker does not turn the frame into foreground), cleaned by a 3x3
opening. Its connected components are the detections; tracks link them frame to frame, nearest
predicted position first, through gaps of up to `MAX_GAP` frames. Positions are also kept in the
first frame's coordinates, where the camera's motion is gone (`wx`, `wy`).

An object that comes to rest becomes part of the still background and is no longer found; where it
was last seen, the frames keep showing it. Such a track is carried on through the frames that still
show it there, marked `resting`: it stopped, it did not vanish (and, played the other way, it starts
from rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from monitoring.physics.camera import CameraPath
from monitoring.physics.parallel import pmap

FOREGROUND_LEVEL = 30  # 8-bit levels from the background (after offset removal) that count as foreground
MIN_TRACK_FRAMES = 8  # fewer sightings: not a track the laws can judge
MAX_GAP = 6  # frames a track may go unseen and still continue
RIGID = 0.06  # median frame-to-frame change of log area (or of its rate): above it, a region that changes shape
MIN_SIZE = 0.08  # of the frame's longer side: smaller objects are too few pixels to hold to the laws
SMOOTH = 0.25  # median |second difference| of the path, in diameters: above it, the blob jumps about
COLOUR_SPREAD = 25.0  # levels between its 10th and 90th percentile mean colour: above it, not one object
MAX_TRACKS = 4  # the largest moving tracks are judged; the rest is scenery
MAX_BACKGROUND_FRAMES = 24  # the median background uses at most this many frames, evenly spaced
CANVAS_LIMIT = 3  # the stabilised canvas is at most this many frame widths / heights
REST_CHANGE = 0.35  # where an object was last seen, a change under this share of its contrast with
# its surroundings means it is still there
REST_LEVELS = 6.0  # ... or under this many levels (noise)


@dataclass
class Track:
    """One object through the clip: NaN (or False) in the frames where it was not seen."""

    cx: np.ndarray
    cy: np.ndarray
    wx: np.ndarray  # centroid in the first frame's coordinates (camera removed)
    wy: np.ndarray
    area: np.ndarray
    border: np.ndarray  # touches the frame's border
    masks: np.ndarray  # (T, h, w) bool
    size: tuple[int, int]
    colour: np.ndarray | None = None  # (T, 3) mean RGB of its pixels less the frame's, NaN where not seen
    resting: np.ndarray | None = None  # (T,) bool: carried on at rest where it was last seen, not found

    @property
    def present(self) -> np.ndarray:
        return ~np.isnan(self.cx)

    @property
    def found(self) -> np.ndarray:
        """Frames where it was detected (not carried on at rest)."""
        return self.present if self.resting is None else self.present & ~self.resting

    @property
    def diameter(self) -> float:
        return 2.0 * math.sqrt(float(np.nanmedian(self.area)) / math.pi)

    @property
    def extent(self) -> float:
        """How far it goes from its median position, px, camera removed."""
        p = self.found
        x, y = self.wx[p], self.wy[p]
        return float(np.hypot(x - np.median(x), y - np.median(y)).max())

    @property
    def rigid(self) -> bool:
        """A solid object, measured well enough to hold it to the laws: large enough, it keeps its size
        from frame to frame, its path is smooth and its colour holds (what a walker, regions that merge
        and split, or noise are not)."""
        p = self.found
        a, x, y = self.area[p], self.wx[p], self.wy[p]
        if len(a) < 4 or self.diameter < MIN_SIZE * max(self.size):
            return False
        # Its size holds from frame to frame, or changes steadily (a ball that grows is still a solid
        # object, and the mass law's to judge): a walker's area goes up and down.
        log = np.log(a)
        steadiness = min(
            float(np.median(np.abs(np.diff(log)))), float(np.median(np.abs(np.diff(log, 2)))) / math.sqrt(2)
        )
        jitter = float(np.median(np.hypot(np.diff(x, 2), np.diff(y, 2)))) / self.diameter
        if self.colour is not None:
            c = self.colour[p]
            if float(np.linalg.norm(np.percentile(c, 90, 0) - np.percentile(c, 10, 0))) > COLOUR_SPREAD:
                return False
        return steadiness <= RIGID and jitter <= SMOOTH

    @property
    def moves(self) -> bool:
        """Moves at least its own size: else it sits in the median background and only slivers of it show."""
        return self.extent >= self.diameter


def _canvas(path: CameraPath, size: tuple[int, int]) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Per frame, (2, 3) frame -> canvas; and the canvas size (h, w)."""
    h, w = size
    to_first = path.to_first()
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float).T
    points = np.hstack([(m @ corners)[:2] for m in to_first])
    x0, y0 = np.maximum(points.min(1), [-(CANVAS_LIMIT - 1) * w / 2, -(CANVAS_LIMIT - 1) * h / 2])
    x1, y1 = np.minimum(points.max(1), [w + (CANVAS_LIMIT - 1) * w / 2, h + (CANVAS_LIMIT - 1) * h / 2])
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]])
    return [(shift @ m)[:2] for m in to_first], (int(math.ceil(y1 - y0)), int(math.ceil(x1 - x0)))


def _nanmedian(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (NaN where all are): numpy's nanmedian goes through masked
    arrays and takes ~10x longer on these shapes."""
    ordered = np.sort(stack, axis=0)  # NaN sorts last
    count = (~np.isnan(stack)).sum(0)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0)[None] // 2, axis=0)[0]
    high = np.take_along_axis(ordered, (count // 2)[None], axis=0)[0]
    out = 0.5 * (low + np.where(count % 2 == 1, low, high))
    out[count == 0] = np.nan
    return out


def _backgrounds(frames: np.ndarray, path: CameraPath, hide: np.ndarray | None = None) -> np.ndarray:
    """Per frame, the still scene behind it (float32, NaN where no frame saw it), the median of the
    frames that saw each point; pixels in `hide` (T, h, w) are left out, where another frame saw it."""
    t, h, w, _ = frames.shape
    picks = np.unique(np.linspace(0, t - 1, min(t, MAX_BACKGROUND_FRAMES)).round().astype(int))
    samples = frames[picks].astype(np.float32)
    if hide is not None:
        samples[hide[picks]] = np.nan
    if not path.moving:
        median = _nanmedian(samples)
        if hide is not None:
            unseen = np.isnan(median)
            median[unseen] = np.median(frames, axis=0).astype(np.float32)[unseen]
        return np.broadcast_to(median, frames.shape)
    placements, (ch, cw) = _canvas(path, (h, w))
    stack = np.full((len(picks), ch, cw, 3), np.nan, np.float32)
    for k, i in enumerate(picks):
        stack[k] = cv2.warpAffine(
            samples[k], placements[i], (cw, ch), flags=cv2.INTER_LINEAR, borderValue=(np.nan,) * 3
        )
    canvas = _nanmedian(stack)  # canvas corners no frame saw stay NaN
    out = np.stack(
        [
            cv2.warpAffine(
                canvas,
                placements[i],
                (w, h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(np.nan,) * 3,
            )
            for i in range(t)
        ]
    )
    return out


def _detections(frames: np.ndarray, backgrounds: np.ndarray) -> tuple[list[list[dict]], list[np.ndarray], float]:
    t, h, w, _ = frames.shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    min_area = max(6, int(0.0004 * h * w))
    diffs = frames.astype(np.float32) - backgrounds
    seens = ~np.isnan(diffs).any(-1)
    diffs[~seens] = 0
    if seens.all():  # a still camera: every frame's offset and noise level at once
        offsets = np.median(diffs[:, ::2, ::2].reshape(t, -1, 3), axis=1)
        levels = np.abs(diffs - offsets[:, None, None]).max(-1)
        noise = np.median(levels[:, ::2, ::2].reshape(t, -1), axis=1)

    def detect(i: int) -> tuple[list[dict], np.ndarray, float]:
        diff, seen = diffs[i], seens[i]
        if seens.all():
            level, median = levels[i], float(noise[i])
        elif seen.any():
            level = np.abs(diff - np.median(diff[seen][::4], axis=0)).max(-1)  # less the frame's global offset
            median = float(np.median(level[seen][::4]))
        else:
            level, median = np.abs(diff).max(-1), 0.0
        threshold = max(FOREGROUND_LEVEL, 3.0 * median)
        fg = ((level > threshold) & seen).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(fg, connectivity=8)
        frame = []
        for k in range(1, n):
            a = int(stats[k, cv2.CC_STAT_AREA])
            if a < min_area or a > 0.5 * h * w:
                continue
            x0, y0 = stats[k, cv2.CC_STAT_LEFT], stats[k, cv2.CC_STAT_TOP]
            x1, y1 = x0 + stats[k, cv2.CC_STAT_WIDTH], y0 + stats[k, cv2.CC_STAT_HEIGHT]
            border = bool(x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h or (~seen[y0:y1, x0:x1]).any())
            frame.append(
                {
                    "label": k,
                    "cx": centroids[k][0],
                    "cy": centroids[k][1],
                    "area": a,
                    "border": border,
                    "box": (int(x0), int(y0), int(x1), int(y1)),
                }
            )
        return frame, labels, float(fg.mean())

    found, labels_per_frame, coverage = (list(x) for x in zip(*pmap(detect, range(t)), strict=True))
    return found, labels_per_frame, float(np.median(coverage))


def _link(found: list[list[dict]], size: tuple[int, int]) -> list[list[tuple[int, dict]]]:
    """Detections linked into tracks: greedy, nearest to each track's predicted position first."""
    h, w = size
    tracks: list[list[tuple[int, dict]]] = []
    for i, detections in enumerate(found):
        candidates = []
        for j, track in enumerate(tracks):
            last_i, last = track[-1]
            if i - last_i > MAX_GAP + 1:
                continue
            vx = vy = 0.0
            if len(track) >= 2:
                prev_i, prev = track[-2]
                vx, vy = ((last["cx"] - prev["cx"]) / (last_i - prev_i), (last["cy"] - prev["cy"]) / (last_i - prev_i))
            px, py = last["cx"] + vx * (i - last_i), last["cy"] + vy * (i - last_i)
            size_px = 2 * math.sqrt(last["area"] / math.pi)
            gate = max(3 * size_px, 0.25 * max(h, w))
            for k, d in enumerate(detections):
                distance = math.hypot(d["cx"] - px, d["cy"] - py)
                ratio = max(d["area"], last["area"]) / max(1, min(d["area"], last["area"]))
                if distance <= gate and ratio < 4:
                    candidates.append((distance + size_px * math.log(ratio), j, k))
        used_tracks, used = set(), set()
        for _, j, k in sorted(candidates):
            if j in used_tracks or k in used:
                continue
            tracks[j].append((i, detections[k]))
            used_tracks.add(j)
            used.add(k)
        tracks.extend([(i, d)] for k, d in enumerate(detections) if k not in used)
    return tracks


def _tracks(found: list[list[dict]], labels: list[np.ndarray], frames: np.ndarray, path: CameraPath):
    """Linked detections that make a moving track, each with its detections."""
    t, h, w, _ = frames.shape
    to_first = path.to_first()
    frame_colour = frames.reshape(t, -1, 3).mean(1)
    out = []
    for linked in _link(found, (h, w)):
        if len(linked) < MIN_TRACK_FRAMES:
            continue
        track = Track(*(np.full(t, np.nan) for _ in range(5)), np.zeros(t, bool), np.zeros((t, h, w), bool), (h, w))
        for i, d in linked:
            track.cx[i], track.cy[i], track.area[i], track.border[i] = d["cx"], d["cy"], d["area"], d["border"]
            track.wx[i], track.wy[i] = (to_first[i] @ [d["cx"], d["cy"], 1])[:2]
        if not track.moves:
            continue
        track.colour = np.full((t, 3), np.nan)
        for i, d in linked:
            x0, y0, x1, y1 = d["box"]
            inside = labels[i][y0:y1, x0:x1] == d["label"]
            track.masks[i, y0:y1, x0:x1] = inside
            # against the frame's own mean: the light changing on everything is not the object changing
            track.colour[i] = frames[i, y0:y1, x0:x1][inside].mean(0) - frame_colour[i]
        out.append((track, linked))
    return out


def _contrast(frame: np.ndarray, mask: np.ndarray) -> float:
    """How far an object's mean colour is from the ring of pixels around it."""
    size = max(3, int(2 * math.sqrt(mask.sum() / math.pi) // 2) | 1)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool) & ~mask
    if not ring.any():
        return 0.0
    return float(np.abs(frame[mask].mean(0) - frame[ring].mean(0)).max())


def _error(frame: np.ndarray, x: int, y: int, template: np.ndarray, inside: np.ndarray) -> float:
    """Mean largest-channel difference between `template` (where `inside`) and `frame` at top-left (x, y)."""
    th, tw = inside.shape
    if x < 0 or y < 0 or y + th > frame.shape[0] or x + tw > frame.shape[1]:
        return float("inf")
    patch = frame[y : y + th, x : x + tw][inside].astype(np.float32)
    return float(np.abs(patch - template[inside]).max(-1).mean())


def _match(frame: np.ndarray, template: np.ndarray, inside: np.ndarray, x: int, y: int, reach: int):
    """Top-left (x, y) within `reach` px of (x, y) where `frame` best shows `template`, and its error."""
    th, tw = inside.shape
    sy0, sx0 = max(0, y - reach), max(0, x - reach)
    search = frame[sy0 : y + th + reach, sx0 : x + tw + reach]
    if search.shape[0] < th or search.shape[1] < tw:
        return x, y, float("inf")
    weights = np.repeat(inside[..., None], 3, -1).astype(np.uint8)
    by, bx = np.unravel_index(
        np.argmin(cv2.matchTemplate(search, template, cv2.TM_SQDIFF, mask=weights)),
        (search.shape[0] - th + 1, search.shape[1] - tw + 1),
    )
    x, y = int(bx) + sx0, int(by) + sy0
    return x, y, _error(frame, x, y, template, inside)


def _carry_at_rest(track: Track, frames: np.ndarray, path: CameraPath) -> None:
    """Follow the object on, both ways, where the detector lost it while the frames still show it: it
    came to rest (it is then part of the still background) or rested there before it moved. Its
    last (first) look is matched near where it was, within its last step and a quarter of its size."""
    t, h, w, _ = frames.shape
    track.resting = np.zeros(t, bool)
    to_first = path.to_first()
    seen = np.flatnonzero(track.present)
    if len(seen) < 2:
        return
    for end, step in ((int(seen[-1]), 1), (int(seen[0]), -1)):
        i = end + step
        if track.border[end] or not 0 <= i < t or track.present[i]:
            continue
        rows, cols = np.flatnonzero(track.masks[end].any(1)), np.flatnonzero(track.masks[end].any(0))
        y, x = int(rows[0]), int(cols[0])
        template = frames[end][y : rows[-1] + 1, x : cols[-1] + 1]
        inside = track.masks[end][y : rows[-1] + 1, x : cols[-1] + 1]
        limit = max(REST_LEVELS, REST_CHANGE * _contrast(frames[end], track.masks[end]))
        near = seen[-2] if step == 1 else seen[1]
        moved = math.hypot(track.cx[end] - track.cx[near], track.cy[end] - track.cy[near]) / abs(end - near)
        ox, oy = track.cx[end] - x, track.cy[end] - y  # the centroid from the template's corner
        while 0 <= i < t and not track.present[i]:
            nx, ny, error = _match(frames[i], template, inside, x, y, int(moved + 0.25 * track.diameter) + 2)
            if error > limit:
                break
            moved, x, y = math.hypot(nx - x, ny - y), nx, ny
            track.cx[i], track.cy[i] = x + ox, y + oy
            track.wx[i], track.wy[i] = (to_first[i] @ [x + ox, y + oy, 1])[:2]
            track.area[i], track.colour[i] = track.area[end], track.colour[end]
            track.masks[i][y : y + inside.shape[0], x : x + inside.shape[1]] = inside
            track.border[i] = x <= 0 or y <= 0 or x + inside.shape[1] >= w or y + inside.shape[0] >= h
            track.resting[i] = True
            i += step


def _slows(track: Track) -> bool:
    """Somewhere it moves under a tenth of its size from one frame to the next: it may rest there."""
    seen = np.flatnonzero(track.present)
    steps = np.hypot(np.diff(track.wx[seen]), np.diff(track.wy[seen]))[np.diff(seen) == 1]
    return bool((steps < 0.1 * track.diameter).any())


def find_tracks(frames: np.ndarray, path: CameraPath) -> tuple[list[Track], dict]:
    """The moving objects of (T, h, w, 3) uint8 frames, largest first (at most `MAX_TRACKS`); and measurements.

    Rigid ones (`Track.rigid`) first: only they are held to the laws."""
    t, h, w, _ = frames.shape
    found, labels, coverage = _detections(frames, _backgrounds(frames, path))
    first = _tracks(found, labels, frames, path)
    if any(_slows(track) for track, _ in first):
        # Again, with the moving objects left out of the background: one that rests for part of the
        # clip is otherwise partly in the median and loses the pixels where it rests. What was found
        # may be only the part that differs from the median, so its whole box is left out.
        hide = np.zeros((t, h, w), bool)
        for _, linked in first:
            for i, d in linked:
                x0, y0, x1, y1 = d["box"]
                grow = max(2, (x1 - x0 + y1 - y0) // 8)
                hide[i, max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow] = True
        found, labels, coverage = _detections(frames, _backgrounds(frames, path, hide=hide))
        first = _tracks(found, labels, frames, path)
    out = [track for track, _ in first]
    for track in out:
        _carry_at_rest(track, frames, path)
    out.sort(key=lambda k: (not k.rigid, -float(np.nansum(k.area))))
    measured = {
        "foreground_coverage": round(coverage, 4),
        "detections": sum(map(len, found)),
        "moving_regions": len(out),
    }
    return out[:MAX_TRACKS], measured
