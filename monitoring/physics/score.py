"""`score_video`: the camera, the moving objects, the pixels and the laws, combined into one score."""

from __future__ import annotations

import math
from numbers import Real

import cv2
import numpy as np

from monitoring.physics import laws
from monitoring.physics.camera import estimate_camera
from monitoring.physics.held import held_frames
from monitoring.physics.parallel import pmap
from monitoring.physics.pixels import Guide, measure
from monitoring.physics.tracks import MIN_TRACK_FRAMES, find_tracks

FLOW_SIZE = 80  # longer side for optical flow (96: finer, ~1.5x the time)
TRACK_SIZE = 128  # longer side for the camera path and the object tracks
TAU_WARP = 6.0  # 8-bit levels
TAU_FLICKER = 4.0  # 8-bit levels
TAU_SMOOTH = 1.5  # px of interpolation error at the FLOW_SIZE scale
BREAK_WINDOW = 3  # pairs on each side that a pair's warping error is compared with
BREAK_FREE = 0.3  # a pair's excess warping error (over its neighbours', per the clip's median) that costs nothing
TAU_BREAK = 0.6
LOCAL_BREAK = 0.3  # weight of the worst pixels' break against the mean's
OBJECT_BREAK = 0.3  # weight of a tracked object's own break against the whole frame's
OBJECT_FLOOR = 4.0  # levels added to an object's median error: a textureless object's is near 0
CONTINUITY_PER_EVENT = 2.0
FLOOR = 0.01
STILL = 0.03  # dynamics (frame sizes per second) below which the scene does not move
NO_EVIDENCE = 0.5  # the most a clip without any motion can score: nothing to judge it by

SUBSCORES = (
    "temporal_consistency",
    "frame_continuity",
    "flicker",
    "motion_smoothness",
    "object_continuity",
    "gravity",
    "energy_conservation",
    "mass_conservation",
    "arrow_of_time",
)
OBJECT_SUBSCORES = SUBSCORES[4:]
# What "violations" may name (docs/physics.md, section 5)
VIOLATION_KINDS = (
    "teleport",
    "vanish",
    "appear",
    "disappear",
    "gravity",
    "energy_gain",
    "size_change",
    "spontaneous_start",
    "break",
    "freeze",
    "flicker",
)
WEIGHTS = dict.fromkeys(SUBSCORES, 1.0)
WORST_EXTRA = 2.0  # the lowest subscore counts this much more: one clearly broken law is enough
OCCLUDER_MARGIN = 5  # px at the tracking scale: another moving thing this close may hide or push an object
soft = laws.soft


def combine(subscores: dict[str, float | None]) -> float:
    """Weighted geometric mean of the subscores that apply (floored at FLOOR), the lowest weighted
    `WORST_EXTRA` more; 0.5 when none applies."""
    used = {k: max(FLOOR, min(1.0, v)) for k, v in subscores.items() if v is not None}
    if not used:
        return NO_EVIDENCE
    weights = {k: WEIGHTS[k] for k in used}
    weights[min(used, key=used.get)] += WORST_EXTRA
    log = sum(weights[k] * math.log(v) for k, v in used.items())
    return float(min(1.0, max(0.0, math.exp(log / sum(weights.values())))))


def _validate(frames, fps) -> tuple[np.ndarray, float]:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1:
        raise ValueError("frames must hold at least one frame, got 0")
    if h < 16 or w < 16:
        raise ValueError(f"frames must be at least 16x16 pixels, got {h}x{w}")
    if isinstance(fps, bool) or not isinstance(fps, Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return np.ascontiguousarray(frames), float(fps)


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    scale = size / max(h, w)
    if scale >= 1:
        return frames
    dsize = (max(8, round(w * scale)), max(8, round(h * scale)))
    return np.stack(pmap(lambda f: cv2.resize(f, dsize, interpolation=cv2.INTER_AREA), frames))


def _to_flow_scale(tracks, size: tuple[int, int]) -> tuple[np.ndarray | None, list[Guide]]:
    """The tracks' masks at the flow scale (every partly covered pixel, dilated by one) and their guides."""
    if not tracks:
        return None, []
    h, w = size
    kernel = np.ones((3, 3), np.uint8)
    scale = w / tracks[0].size[1]
    guides = []
    for track in tracks:
        regions = np.stack(
            [
                cv2.dilate(cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA), kernel) > 0
                for m in track.masks
            ]
        )
        guides.append(Guide(regions, track.cx * scale, track.cy * scale, track.found & ~track.border))
    return np.any([g.regions for g in guides], axis=0), guides


def score_video(frames: np.ndarray, fps: float) -> dict:
    """Physics-plausibility of a clip in [0, 1]; see docs/physics.md for the method."""
    frames, fps = _validate(frames, fps)
    small = _resize(frames, FLOW_SIZE)
    if len(frames) < 3:
        return _score(frames, small, fps, [])
    held = held_frames(small)
    # A conversion's repeats carry no motion: without them the clip plays at its content's own rate.
    kept = np.setdiff1d(np.arange(len(frames)), held.converted)
    freezes = [[int(np.searchsorted(kept, f)) for f in freeze] for freeze in held.freezes]
    result = _score(frames[kept], small[kept], fps * len(kept) / len(frames), freezes)
    if held.converted:
        for v in result["violations"]:
            v["frames"] = [int(kept[f]) for f in v["frames"]]
        if "break" in result["details"]:
            result["details"]["break"]["frames"] = [int(kept[f]) for f in result["details"]["break"]["frames"]]
        if "freezes" in result["details"]:
            result["details"]["freezes"] = held.freezes
        result["details"]["repeated_frames"] = held.converted
        result["frames"], result["fps"] = len(frames), fps
    return result


def _score(frames: np.ndarray, small: np.ndarray, fps: float, freezes: list[list[int]]) -> dict:
    """The score of `frames` (and of `small`: the same at the flow scale) once held frames are sorted out."""
    t = len(frames)
    subscores: dict[str, float | None] = dict.fromkeys(SUBSCORES)
    notes: dict[str, str] = {}
    details: dict = {}
    violations: list[dict] = []

    # 1. The camera's path, then the objects that move on their own
    track_frames = _resize(frames, TRACK_SIZE)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in track_frames])
    camera = estimate_camera(gray)
    details["camera"] = camera.summary()
    tracks = []
    if t >= MIN_TRACK_FRAMES:
        tracks, found = find_tracks(track_frames, camera)
        details.update(found)

    # 2. Pixels: warping error, flicker, smoothness, how much the scene moves
    objects, guides = _to_flow_scale(tracks, small.shape[1:3])
    dynamics = 0.0
    if t >= 2:
        px = measure(small, camera, objects, guides)
        dynamics = float(np.mean(px["fastest"])) * fps / max(small.shape[1:3])
        contacts = {c for track in tracks if track.rigid for c in laws.contacts(track)}
        _pixel_subscores(px, small.shape[1:3], contacts, freezes, subscores, notes, details, violations)
    evidence = "motion" if tracks or dynamics >= STILL else "camera" if camera.moving else "none"

    # 3. The laws, object by object
    if t < 2:
        notes["frame_continuity"] = notes["temporal_consistency"] = notes["flicker"] = (
            "too short: needs at least 2 frames"
        )
        why = "too short: needs at least 2 frames"
    elif t < MIN_TRACK_FRAMES:
        why = f"too short: object tracking needs at least {MIN_TRACK_FRAMES} frames"
    elif evidence == "none":
        why = "static clip: no moving object"
    elif not tracks:
        why = "no moving object tracked"
    elif not tracks[0].rigid:
        why = "no rigid object: the moving regions change shape (people, merging objects) or are too small to measure"
    else:
        why = ""
    if t >= 3 and evidence == "none":
        subscores["motion_smoothness"] = None
        details.pop("interpolation_error_px", None)
        notes["motion_smoothness"] = "static clip: no motion"
    elif t < 3:
        notes["motion_smoothness"] = "too short: needs at least 3 frames"
    if why:
        for name in OBJECT_SUBSCORES:
            notes[name] = why
    else:
        _object_subscores(tracks, fps, subscores, notes, details, violations)

    subscores = {k: (None if v is None else round(float(min(1.0, max(0.0, v))), 4)) for k, v in subscores.items()}
    score = combine(subscores)
    if evidence == "none":
        score = min(score, NO_EVIDENCE)  # still video: it can be broken (flicker), never proven plausible
    return {
        "score": round(score, 4),
        "subscores": subscores,
        "notes": notes,
        "dynamics": round(dynamics, 4),
        "evidence": evidence,
        "violations": violations,
        "object_tracked": bool(tracks),
        "details": details,
        "frames": t,
        "fps": fps,
    }


def _excess(series: list[float], floor: float) -> np.ndarray:
    """Each pair's excess over the median of its neighbours (`BREAK_WINDOW` each side), in units of the
    series' median + `floor`; NaN pairs (no reading) are left out and have none."""
    e = np.asarray(series, float)
    known = ~np.isnan(e)
    if known.sum() < 2 * BREAK_WINDOW:
        return np.zeros(len(e))
    around = [
        np.delete(e[max(0, i - BREAK_WINDOW) : i + 1 + BREAK_WINDOW], min(i, BREAK_WINDOW)) for i in range(len(e))
    ]
    medians = np.array([np.median(a[~np.isnan(a)]) if (~np.isnan(a)).any() else np.nan for a in around])
    out = np.maximum(0.0, e - medians) / (float(np.median(e[known])) + floor)
    return np.nan_to_num(out, nan=0.0)


def breaks(px: dict, explained: set[int] = frozenset()) -> tuple[float, int]:
    """How far the worst pair of frames stands out from the pairs around it; and that pair.

    Real motion, fast or slow, changes the warping error gradually; a cut, dropped frames, a pasted
    patch or a jump in scale makes a pair stand out. Three readings of the error: its mean over the
    pixels the flow follows (a global break); its worst `WORST` share of pixels, where a local break
    shows, weighted down since it is noisier; and its mean over each tracked object's pixels (an
    object that jumps or vanishes, whatever the rest of the frame does). Pairs in `explained` (a
    tracked object's contact, a freeze) are left out."""
    if len(px["structure"]) < 3:
        return 0.0, 0
    excess = np.maximum(_excess(px["structure"], 1.0), LOCAL_BREAK * _excess(px["worst"], 10.0))
    for series in px.get("objects", ()):
        excess = np.maximum(excess, OBJECT_BREAK * _excess(series, OBJECT_FLOOR))
    excess[[i for i in explained if i < len(excess)]] = 0.0
    pair = int(np.argmax(excess))
    return float(excess[pair]), pair


def _pixel_subscores(
    px: dict,
    size,
    contacts: set[int],
    freezes: list[list[int]],
    subscores: dict,
    notes: dict,
    details: dict,
    violations: list,
) -> None:
    warp = float(np.mean(px["warp"]))
    subscores["temporal_consistency"] = soft(warp, TAU_WARP)
    details["warp_error"] = round(warp, 3)
    if len(px["warp"]) >= 3:
        # A contact's pairs are the laws' to judge, a freeze's are reported as the freeze
        explained = {i for c in contacts for i in (c - 2, c - 1, c)} | {i for a, b in freezes for i in range(a - 1, b)}
        excess, pair = breaks(px, explained)
        subscores["frame_continuity"] = soft(max(0.0, excess - BREAK_FREE), TAU_BREAK) * math.exp(
            -CONTINUITY_PER_EVENT * len(freezes)
        )
        details["break"] = {"excess": round(excess, 3), "frames": [pair, pair + 1]}
        if excess > BREAK_FREE + TAU_BREAK:
            violations.append({"kind": "break", "frames": [pair, pair + 1], "track": None})
        violations += [{"kind": "freeze", "frames": freeze, "track": None} for freeze in freezes]
        if freezes:
            details["freezes"] = freezes
    else:
        notes["frame_continuity"] = "too short: needs at least 4 frames"
    if px["flicker"]:
        flicker = float(np.mean(px["flicker"]))
        subscores["flicker"] = soft(flicker, TAU_FLICKER)
        details["flicker_error"] = round(flicker, 3)
        flickering = [i for i, e in enumerate(px["flicker"]) if e > 2 * TAU_FLICKER]
        if flickering:
            violations.append({"kind": "flicker", "frames": [flickering[0], flickering[-1] + 1], "track": None})
    else:
        notes["flicker"] = "no still background (the whole scene moves)"
    details["moving_fraction_max"] = round(float(np.max(px["moving_share"])), 4)
    if px["interpolation"]:
        # px at the FLOW_SIZE scale, whatever the clip's own size
        miss = float(np.median(px["interpolation"])) * FLOW_SIZE / max(size)
        subscores["motion_smoothness"] = soft(miss, TAU_SMOOTH)
        details["interpolation_error_px"] = round(miss, 4)
    else:
        notes["motion_smoothness"] = "static clip: no motion"


def _object_subscores(tracks, fps: float, subscores: dict, notes: dict, details: dict, violations: list) -> None:
    """Each law over every tracked object: the worst object sets the subscore (one broken law is enough)."""
    events, per_track, values = [], [], {name: [] for name in OBJECT_SUBSCORES}
    reasons: dict[str, str] = {}
    kernel = np.ones((2 * OCCLUDER_MARGIN + 1,) * 2, np.uint8)
    moving = [np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in t.masks]) for t in tracks]
    changes = 0
    for index, track in enumerate(t for t in tracks if t.rigid):
        others = [m for k, m in enumerate(moving) if tracks[k] is not track]
        occluders = np.any(others, axis=0) if others else None
        found, cont = laws.continuity(track, index, occluders)
        events += found
        began, stopped = laws.starts(track, occluders)
        changes += len(began) + len(stopped)
        violations += [{"kind": "spontaneous_start", "frames": [f - 1, f], "track": index} for f in began]
        cont |= {"starts": began, "stops": stopped}
        values["arrow_of_time"].append(math.exp(-CONTINUITY_PER_EVENT * len(began)))
        ge = laws.gravity_energy(track, cont["teleports"], fps)
        m, mass_details = laws.mass(track)
        record = {"track": index, "frames": [int(np.flatnonzero(track.present)[[0, -1]][i]) for i in (0, 1)]}
        record |= cont | {k: v for k, v in ge.items() if not k.endswith("_reason")} | mass_details
        per_track.append(record)
        for name, value, reason in (
            ("gravity", ge.get("gravity"), ge.get("gravity_reason")),
            ("energy_conservation", ge.get("energy"), ge.get("energy_reason")),
            ("mass_conservation", m, mass_details.get("mass_reason")),
        ):
            if value is None:
                reasons.setdefault(name, reason)
            else:
                values[name].append(value)
        if ge.get("gravity") is not None and ge["gravity"] < 0.5:
            first, last = ge["flight_pieces"][0][0], ge["flight_pieces"][-1][1]
            violations.append({"kind": "gravity", "frames": [first, last], "track": index})
        violations += [{"kind": "energy_gain", "frames": [f, f], "track": index} for f in ge.get("energy_gains", [])]
        if m is not None and m < 0.5:
            present = np.flatnonzero(track.present)
            violations.append({"kind": "size_change", "frames": [int(present[0]), int(present[-1])], "track": index})
    violations += events
    subscores["object_continuity"] = math.exp(-CONTINUITY_PER_EVENT * len(events))
    if not changes:
        values["arrow_of_time"] = []
        reasons["arrow_of_time"] = "no object starts or stops at once: nothing shows which way time runs"
    for name in ("gravity", "energy_conservation", "mass_conservation", "arrow_of_time"):
        if values[name]:
            subscores[name] = min(values[name])
        else:
            notes[name] = reasons[name]
    # The largest object's measurements at the top level, every object's under "tracks"
    details.update({k: v for k, v in per_track[0].items() if k not in ("track", "frames")})
    details["events"] = events
    details["tracks"] = per_track
