"""Physics-plausibility score of a generated clip, from computable signals only (CPU, numpy/OpenCV, no weights).

`score_video(frames, fps)` takes uint8 frames of shape (T, H, W, 3) (RGB) and the clip's frame rate (> 0),
and returns a JSON-serialisable dict: "score" (in [0, 1], 1 = plausible), "subscores" (name -> [0, 1] or
None), "notes" (why a subscore is None), "object_tracked", "details" (raw measurements), "frames", "fps".
Bad input raises ValueError. 33 frames of 128x128 take ~0.15-0.3 s on two busy cores (`python -m bench.physics`).

The method, subscore by subscore: docs/physics.md
"""

from __future__ import annotations

import itertools
import math
from numbers import Real

import cv2
import numpy as np

FLOW_SIZE = 80  # longer side for optical flow (96: finer, ~1.5x the time)
TRACK_SIZE = 128  # longer side for the object track
MIN_TRACK_FRAMES = 8  # fewer, and a moving object still sits in the median frame
FOREGROUND_LEVEL = 30  # 8-bit levels from the background (after offset removal) that count as foreground

TAU_WARP = 6.0  # 8-bit levels
TAU_FLICKER = 4.0  # 8-bit levels
TAU_SMOOTH = 1.5  # px of interpolation error at the FLOW_SIZE scale
TAU_GRAVITY_FIT = 0.08  # rms residual / object diameter
TAU_ENERGY = 0.2  # energy ratio above 1.05
TAU_MASS = 0.12  # robust coefficient of variation of the area
CONTINUITY_PER_EVENT = 2.0
FLOOR = 0.01

SUBSCORES = (
    "temporal_consistency",
    "flicker",
    "motion_smoothness",
    "object_continuity",
    "gravity",
    "energy_conservation",
    "mass_conservation",
)
WEIGHTS = dict.fromkeys(SUBSCORES, 1.0)


def soft(x: float, tau: float) -> float:
    return 1.0 / (1.0 + (x / tau) ** 2)


# --------------------------------------------------------------------------------------------------
# input


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
    return np.stack([cv2.resize(f, dsize, interpolation=cv2.INTER_AREA) for f in frames])


# --------------------------------------------------------------------------------------------------
# pixels: flow, warping error, flicker, smoothness


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)


def _sample(image: np.ndarray, grid: np.ndarray, flow: np.ndarray) -> np.ndarray:
    coords = grid + flow
    return cv2.remap(image, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _guided(
    a: np.ndarray, b: np.ndarray, flow: np.ndarray, region: np.ndarray, shift: tuple[float, float]
) -> np.ndarray:
    """`flow` refined on the finest level only, after setting the object's region to the track's displacement."""
    init = flow.copy()
    init[region] = shift
    return cv2.calcOpticalFlowFarneback(a, b, init, 0.5, 0, 9, 3, 5, 1.1, cv2.OPTFLOW_USE_INITIAL_FLOW)


def _flows(gray: np.ndarray, guide: dict | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    t = len(gray)
    fwd = [_flow(gray[i], gray[i + 1]) for i in range(t - 1)]
    bwd = [_flow(gray[i + 1], gray[i]) for i in range(t - 1)]  # defined on frame i + 1
    if guide is not None:
        regions, cx, cy, scale = guide["regions"], guide["cx"], guide["cy"], guide["scale"]
        for i in range(t - 1):
            if np.isnan(cx[i]) or np.isnan(cx[i + 1]):
                continue
            dx, dy = (cx[i + 1] - cx[i]) * scale, (cy[i + 1] - cy[i]) * scale
            fwd[i] = _guided(gray[i], gray[i + 1], fwd[i], regions[i], (dx, dy))
            bwd[i] = _guided(gray[i + 1], gray[i], bwd[i], regions[i + 1], (-dx, -dy))
    return fwd, bwd


def _pixel_measures(small: np.ndarray, object_masks: np.ndarray | None, guide: dict | None) -> dict:
    """Per pair: warping error, static-background flicker, moving fraction; per middle frame: interpolation miss."""
    t, h, w, _ = small.shape
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small])
    colour = small.astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.dstack([xs, ys])
    fwd, bwd = _flows(gray, guide)

    warp, flicker, motion_frac = [], [], []
    for i in range(t - 1):
        f, b = fwd[i], bwd[i]
        b_at = _sample(b, grid, f)
        target = grid + f
        inside = (target[..., 0] >= 0) & (target[..., 0] <= w - 1) & (target[..., 1] >= 0) & (target[..., 1] <= h - 1)
        consistent = ((f + b_at) ** 2).sum(-1) < 0.01 * ((f**2).sum(-1) + (b_at**2).sum(-1)) + 0.5
        valid = inside & consistent
        warped = _sample(colour[i + 1], grid, f)
        diff = np.abs(colour[i] - warped).mean(-1)
        warp.append(float(diff[valid].mean()) if valid.mean() > 0.05 else float(diff.mean()))

        speed_f = np.sqrt((f**2).sum(-1))
        speed_b = np.sqrt((b**2).sum(-1))
        moving = (speed_f > 0.5) | (speed_b > 0.5)
        motion_frac.append(float(moving.mean()))
        static = ~moving
        if object_masks is not None:
            static &= ~(object_masks[i] | object_masks[i + 1])
        if static.mean() >= 0.1:
            flicker.append(float(np.abs(colour[i + 1] - colour[i]).mean(-1)[static].mean()))

    interpolation = []
    for i in range(1, t - 1):
        ahead, back = fwd[i], bwd[i - 1]  # both on frame i's grid: to i + 1 and to i - 1
        speed = np.sqrt(((0.5 * (ahead - back)) ** 2).sum(-1))
        moving = speed > 0.5
        if moving.mean() < 0.002:
            continue
        # positions x(i-1), x(i), x(i+1) of a pixel: the midpoint of its neighbours misses x(i) by |a| / 2
        miss = 0.5 * np.sqrt(((ahead + back)[moving] ** 2).sum(-1))
        interpolation.append(float(np.median(miss)))
    return {"warp": warp, "flicker": flicker, "interpolation": interpolation, "motion_frac": motion_frac}


# --------------------------------------------------------------------------------------------------
# one object: track, continuity, gravity, energy, mass


def _track(frames: np.ndarray) -> dict:
    t, h, w, _ = frames.shape
    background = np.median(frames, axis=0).astype(np.int16)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    min_area = max(6, int(0.0004 * h * w))
    cx = np.full(t, np.nan)
    cy = np.full(t, np.nan)
    area = np.full(t, np.nan)
    border = np.zeros(t, bool)
    masks = np.zeros((t, h, w), bool)
    coverage = []
    for i in range(t):
        diff = frames[i].astype(np.int16) - background
        diff -= np.median(diff[::2, ::2].reshape(-1, 3), axis=0).astype(np.int16)  # the frame's global offset
        level = np.abs(diff).max(-1)
        threshold = max(FOREGROUND_LEVEL, 3.0 * float(np.median(level)))
        fg = (level > threshold).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
        coverage.append(float(fg.mean()))
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(fg, connectivity=8)
        if n <= 1:
            continue
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        a = int(stats[k, cv2.CC_STAT_AREA])
        if a < min_area or a > 0.5 * h * w:
            continue
        x0, y0 = stats[k, cv2.CC_STAT_LEFT], stats[k, cv2.CC_STAT_TOP]
        x1, y1 = x0 + stats[k, cv2.CC_STAT_WIDTH], y0 + stats[k, cv2.CC_STAT_HEIGHT]
        cx[i], cy[i] = centroids[k]
        area[i] = a
        border[i] = x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h
        masks[i] = labels == k
    present = ~np.isnan(cx)
    return {
        "cx": cx,
        "cy": cy,
        "area": area,
        "border": border,
        "masks": masks,
        "present": present,
        "coverage": float(np.median(coverage)),
        "size": (h, w),
    }


def _continuity(track: dict) -> tuple[float, dict]:
    present, border = track["present"], track["border"]
    idx = np.flatnonzero(present)
    t = len(present)
    diameter = 2.0 * math.sqrt(float(np.nanmedian(track["area"])) / math.pi)
    events: list[dict] = []
    steps = [(i, j) for i, j in itertools.pairwise(idx) if j == i + 1]
    jumps = np.array([math.hypot(track["cx"][j] - track["cx"][i], track["cy"][j] - track["cy"][i]) for i, j in steps])
    limit = max(4.0 * float(np.median(jumps)), 0.5 * diameter, 2.0) if len(jumps) else float("inf")
    teleports = [int(j) for (_, j), d in zip(steps, jumps, strict=True) if d > limit]
    events += [{"kind": "teleport", "frame": f} for f in teleports]
    for i, j in itertools.pairwise(idx):
        if j > i + 1 and not (border[i] or border[j]):
            events.append({"kind": "vanish", "frames": [int(i) + 1, int(j) - 1]})
    if idx[0] > 0 and not border[idx[0]]:
        events.append({"kind": "appear", "frame": int(idx[0])})
    if idx[-1] < t - 1 and not border[idx[-1]]:
        events.append({"kind": "disappear", "frame": int(idx[-1])})
    value = math.exp(-CONTINUITY_PER_EVENT * len(events))
    return value, {
        "events": events,
        "teleport_limit_px": round(limit, 2) if math.isfinite(limit) else None,
        "teleports": teleports,
        "diameter_px": round(diameter, 2),
    }


def _pieces(track: dict, teleports: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """Indices of free-flight candidates: the usable track cut at bounces, teleports and long gaps."""
    usable = np.flatnonzero(track["present"] & ~track["border"])
    if len(usable) < 4:
        return [], []
    y = track["cy"][usable]
    v = np.diff(y) / np.diff(usable)  # px / frame
    dv = np.diff(v)
    jump = max(4.0 * float(np.median(np.abs(dv))), 2.0) if len(dv) else float("inf")
    cut_after = set()  # cut between usable[k] and usable[k + 1]
    bounces = []  # sample index k in usable: the extreme frame of a bounce, left out of both pieces
    for k in range(1, len(usable) - 1):
        if v[k - 1] * v[k] < 0 and abs(v[k] - v[k - 1]) > jump:
            bounces.append(k)
    gaps = np.diff(usable)
    for k, g in enumerate(gaps):
        if g > 3 or usable[k + 1] in teleports:
            cut_after.add(k)
    pieces, current = [], []
    piece_bounce = []  # for each cut: the bounce sample between the piece before and after, or -1
    for k in range(len(usable)):
        if k in bounces:
            pieces.append(current)
            piece_bounce.append(int(usable[k]))
            current = []
            continue
        current.append(int(usable[k]))
        if k in cut_after:
            pieces.append(current)
            piece_bounce.append(-1)
            current = []
    pieces.append(current)
    return [np.array(p) for p in pieces], piece_bounce


def _gravity_energy(track: dict, teleports: list[int], diameter: float, fps: float) -> dict:
    pieces, between = _pieces(track, teleports)
    h = track["size"][0]
    cy, cx = track["cy"], track["cx"]
    airborne_extent = max(3.0, 0.02 * h, 0.25 * diameter)
    flight = [i for i, p in enumerate(pieces) if len(p) >= 4 and np.ptp(cy[p]) >= airborne_extent]
    out: dict = {
        "pieces": [[int(p[0]), int(p[-1])] for p in pieces if len(p)],
        "bounces": [b for b in between if b >= 0],
    }
    if not flight:
        out["gravity_reason"] = "no free flight (object supported, resting or too short a flight)"
        out["energy_reason"] = "no bounce between free-flight pieces"
        return out
    # joint least squares: y = a t^2 / 2 + b_j t + c_j
    n = sum(len(pieces[j]) for j in flight)
    design = np.zeros((n, 1 + 2 * len(flight)))
    target = np.zeros(n)
    row = 0
    for col, j in enumerate(flight):
        p = pieces[j]
        tt = p.astype(float)
        design[row : row + len(p), 0] = 0.5 * tt**2
        design[row : row + len(p), 1 + 2 * col] = tt
        design[row : row + len(p), 2 + 2 * col] = 1.0
        target[row : row + len(p)] = cy[p]
        row += len(p)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    lin_coef, *_ = np.linalg.lstsq(design[:, 1:], target, rcond=None)
    lin_resid = target - design[:, 1:] @ lin_coef
    a = float(coef[0])  # px / frame^2, + is down
    sse, sse_lin = float(resid @ resid), float(lin_resid @ lin_resid)
    explained = max(0.0, 1.0 - sse / sse_lin) if sse_lin > 1e-9 else 0.0
    rms = math.sqrt(sse / n)
    direction = 0.5 + 0.5 * math.copysign(1.0, a) * explained
    fit = soft(rms / max(diameter, 1.0), TAU_GRAVITY_FIT)
    out.update(
        {
            "gravity": direction * fit,
            "acceleration_px_per_frame2": round(a, 4),
            "acceleration_heights_per_s2": round(a * fps * fps / h, 3),
            "explained": round(explained, 4),
            "fit_rms_px": round(rms, 3),
            "flight_pieces": [[int(pieces[j][0]), int(pieces[j][-1])] for j in flight],
        }
    )
    # energy across bounces between consecutive fitted pieces
    params = {}
    for col, j in enumerate(flight):
        p = pieces[j]
        vx = np.polyfit(p.astype(float), cx[p], 1)[0] if len(p) >= 2 else 0.0
        params[j] = (float(coef[1 + 2 * col]), float(coef[2 + 2 * col]), float(vx), p)
    ratios = []
    for j in range(len(pieces) - 1):
        bounce = between[j]
        if bounce < 0 or j not in params or (j + 1) not in params:
            continue
        (b0, c0, vx0, p0), (b1, c1, vx1, p1) = params[j], params[j + 1]
        ys = np.concatenate([cy[p0], cy[p1], [cy[bounce]]])
        contact = float(ys.max() if a > 0 else ys.min())
        e0 = 0.5 * (vx0**2 + b0**2) + a * (contact - c0)
        e1 = 0.5 * (vx1**2 + b1**2) + a * (contact - c1)
        if e0 > 1e-6:
            ratios.append(e1 / e0)
    if ratios:
        out["energy"] = float(np.prod([soft(max(0.0, r - 1.05), TAU_ENERGY) for r in ratios]))
        out["energy_ratios"] = [round(r, 3) for r in ratios]
    else:
        out["energy_reason"] = "no bounce between free-flight pieces"
    return out


def _mass(track: dict) -> tuple[float | None, dict]:
    usable = track["present"] & ~track["border"]
    areas = track["area"][usable]
    if len(areas) < MIN_TRACK_FRAMES:
        return None, {"mass_reason": "object away from the border in too few frames"}
    p10, p50, p90 = np.percentile(areas, [10, 50, 90])
    cv = float((p90 - p10) / (2.56 * p50))
    return soft(cv, TAU_MASS), {"area_cv": round(cv, 4), "area_median_px": float(p50)}


# --------------------------------------------------------------------------------------------------


def combine(subscores: dict[str, float | None]) -> float:
    """Weighted geometric mean of the subscores that apply (floored at FLOOR); 0.5 when none does."""
    used = {k: v for k, v in subscores.items() if v is not None}
    if not used:
        return 0.5
    total = sum(WEIGHTS[k] for k in used)
    log = sum(WEIGHTS[k] * math.log(max(FLOOR, min(1.0, v))) for k, v in used.items())
    return float(min(1.0, max(0.0, math.exp(log / total))))


def score_video(frames: np.ndarray, fps: float) -> dict:
    """Physics-plausibility of a clip in [0, 1]; see the module docstring for subscores and combination."""
    frames, fps = _validate(frames, fps)
    t = len(frames)
    subscores: dict[str, float | None] = dict.fromkeys(SUBSCORES)
    notes: dict[str, str] = {}
    details: dict = {}

    track, why = None, ""
    if t >= MIN_TRACK_FRAMES:
        track = _track(_resize(frames, TRACK_SIZE))
        details["foreground_coverage"] = round(track["coverage"], 4)
        details["frames_with_object"] = int(track["present"].sum())
        track, why = _usable_track(track)
    static = _pixel_subscores(_resize(frames, FLOW_SIZE), track, subscores, notes, details)
    if t < MIN_TRACK_FRAMES:
        why = f"too short: object tracking needs at least {MIN_TRACK_FRAMES} frames"
    elif static:
        why = "static clip: no moving object"
    _object_subscores(track, why, fps, subscores, notes, details)

    subscores = {k: (None if v is None else round(float(min(1.0, max(0.0, v))), 4)) for k, v in subscores.items()}
    return {
        "score": round(combine(subscores), 4),
        "subscores": subscores,
        "notes": notes,
        "object_tracked": track is not None,
        "details": details,
        "frames": t,
        "fps": fps,
    }


def _pixel_subscores(small: np.ndarray, track: dict | None, subscores: dict, notes: dict, details: dict) -> bool:
    """Fill temporal_consistency, flicker and motion_smoothness; return whether the clip is static."""
    t, h, w, _ = small.shape
    if t < 2:
        notes["temporal_consistency"] = notes["flicker"] = "too short: needs at least 2 frames"
        notes["motion_smoothness"] = "too short: needs at least 3 frames"
        return True
    masks = guide = None
    if track is not None:
        # INTER_AREA of a 0/1 mask, then > 0, keeps every partly covered pixel; dilate by one for the edge
        kernel = np.ones((3, 3), np.uint8)
        masks = np.stack(
            [
                cv2.dilate(cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA), kernel) > 0
                for m in track["masks"]
            ]
        )
        guide = {"regions": masks, "cx": track["cx"], "cy": track["cy"], "scale": w / track["size"][1]}
    px = _pixel_measures(small, masks, guide)

    warp = float(np.mean(px["warp"]))
    subscores["temporal_consistency"] = soft(warp, TAU_WARP)
    details["warp_error"] = round(warp, 3)
    if px["flicker"]:
        flicker = float(np.mean(px["flicker"]))
        subscores["flicker"] = soft(flicker, TAU_FLICKER)
        details["flicker_error"] = round(flicker, 3)
    else:
        notes["flicker"] = "no static background (camera or whole scene moves)"
    motion = float(np.max(px["motion_frac"]))
    details["moving_fraction_max"] = round(motion, 4)
    static = motion < 0.002 and track is None
    if t < 3:
        notes["motion_smoothness"] = "too short: needs at least 3 frames"
    elif static or not px["interpolation"]:
        notes["motion_smoothness"] = "static clip: no motion"
    else:
        # px at the FLOW_SIZE scale, whatever the clip's own size
        miss = float(np.median(px["interpolation"])) * FLOW_SIZE / max(h, w)
        subscores["motion_smoothness"] = soft(miss, TAU_SMOOTH)
        details["interpolation_error_px"] = round(miss, 4)
    return static


def _usable_track(track: dict) -> tuple[dict | None, str]:
    """The track, or None and why the object subscores cannot use it."""
    present = track["present"]
    if present.sum() < MIN_TRACK_FRAMES:
        if track["coverage"] > 0.5:
            return None, "no object tracked: foreground covers most of the frame"
        return None, f"no object tracked: a foreground object in fewer than {MIN_TRACK_FRAMES} frames"
    cx, cy = track["cx"][present], track["cy"][present]
    extent = float(np.hypot(cx - np.median(cx), cy - np.median(cy)).max())
    diameter = 2.0 * math.sqrt(float(np.median(track["area"][present])) / math.pi)
    if extent < diameter:
        # then the object sits in the median frame too and background subtraction sees only parts of it
        return None, "object moves less than its own size: the median background cannot separate it"
    return track, ""


def _object_subscores(track: dict | None, why: str, fps: float, subscores: dict, notes: dict, details: dict) -> None:
    """Fill object_continuity, gravity, energy_conservation and mass_conservation."""
    if track is None or why:
        for k in ("object_continuity", "gravity", "energy_conservation", "mass_conservation"):
            notes[k] = why
        return
    continuity, cont = _continuity(track)
    subscores["object_continuity"] = continuity
    details.update(cont)
    ge = _gravity_energy(track, cont["teleports"], cont["diameter_px"], fps)
    subscores["gravity"] = ge.pop("gravity", None)
    subscores["energy_conservation"] = ge.pop("energy", None)
    if "gravity_reason" in ge:
        notes["gravity"] = ge.pop("gravity_reason")
    if "energy_reason" in ge:
        notes["energy_conservation"] = ge.pop("energy_reason")
    details.update(ge)
    mass, m = _mass(track)
    subscores["mass_conservation"] = mass
    if mass is None:
        notes["mass_conservation"] = m.pop("mass_reason")
    details.update(m)
