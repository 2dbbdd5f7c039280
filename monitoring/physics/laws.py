"""The laws a tracked object must obey: it persists, it falls as gravity says when it flies, bounces do
not add energy, its size holds, and it does not start moving by itself. Each law reads one track;
positions are camera-free (`wx`, `wy`).

Each violation found is an event `{"kind", "frames": [first, last], "track"}`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from monitoring.physics.tracks import MIN_TRACK_FRAMES, Track

TAU_GRAVITY_FIT = 0.08  # rms residual / object diameter
TAU_ENERGY = 0.2  # energy ratio above 1.05
TAU_MASS = 0.12  # robust coefficient of variation of the area
TAU_STEP = 0.2  # a lasting step in log area, beyond STEP_FREE
STEP_FREE = 0.1
STEP_SPAN = 4  # frames on each side whose median area a step compares
REST_SPEED = 0.03  # diameters per frame: slower is at rest
ABRUPT = 0.25  # diameters per frame gained or lost at once: a start or a stop with no time to speed up
BALLISTIC = 0.5  # share of a straight line's misfit that one constant acceleration must explain


def soft(x: float, tau: float) -> float:
    """Error -> [0, 1]: 1 at 0, flat near 0, 0.5 at tau, falling as 1 / x^2 beyond."""
    return 1.0 / (1.0 + (x / tau) ** 2)


def _usual(values: np.ndarray, moving: np.ndarray) -> float:
    """Median of `values` where the object was detected moving (not carried on at rest), else of all."""
    chosen = values[moving] if moving.any() else values
    return float(np.median(chosen)) if len(chosen) else 0.0


def _hidden(track: Track, frame: int, occluders: np.ndarray | None) -> bool:
    """Another moving thing covers the object's place around `frame`: it may be behind it."""
    if occluders is None:
        return False
    frames = slice(max(0, frame - 1), frame + 2)
    return bool((occluders[frames] & track.masks[frame]).any())


def continuity(track: Track, index: int, occluders: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """Teleports, vanishings, and appearances or disappearances away from the border, the clip's ends
    and other moving things that could hide it (`occluders`: (T, h, w) bool, theirs)."""
    present, border = track.present, track.border
    idx = np.flatnonzero(present)
    t = len(present)
    events: list[dict] = []
    steps = [(i, j) for i, j in itertools.pairwise(idx) if j == i + 1]
    jumps = np.array([math.hypot(track.wx[j] - track.wx[i], track.wy[j] - track.wy[i]) for i, j in steps])
    moving = np.array([bool(track.found[i] and track.found[j]) for i, j in steps], bool)
    limit = max(4.0 * _usual(jumps, moving), 0.5 * track.diameter, 2.0) if len(jumps) else float("inf")
    teleports = [int(j) for (_, j), d in zip(steps, jumps, strict=True) if d > limit]
    events += [{"kind": "teleport", "frames": [f - 1, f], "track": index} for f in teleports]
    for i, j in itertools.pairwise(idx):
        if j > i + 1 and not (border[i] or border[j] or _hidden(track, i, occluders)):
            events.append({"kind": "vanish", "frames": [int(i) + 1, int(j) - 1], "track": index})
    if idx[0] > 0 and not (border[idx[0]] or _hidden(track, idx[0], occluders)):
        events.append({"kind": "appear", "frames": [int(idx[0]), int(idx[0])], "track": index})
    if idx[-1] < t - 1 and not (border[idx[-1]] or _hidden(track, idx[-1], occluders)):
        events.append({"kind": "disappear", "frames": [int(idx[-1]), int(idx[-1])], "track": index})
    return events, {
        "teleport_limit_px": round(limit, 2) if math.isfinite(limit) else None,
        "teleports": teleports,
        "diameter_px": round(track.diameter, 2),
    }


def contacts(track: Track) -> list[int]:
    """Frames where the object's velocity changes at once without a jump in position: it hits
    something (a bounce, a landing). Flow cannot follow such a frame, so it is not a break."""
    usable = np.flatnonzero(track.present & ~track.border)
    if len(usable) < 4:
        return []
    step = np.diff(usable)[:, None]
    v = np.stack([np.diff(track.wx[usable]), np.diff(track.wy[usable])], 1) / step
    dv = np.linalg.norm(np.diff(v, axis=0), axis=1)
    speed = np.linalg.norm(v, axis=1)
    found = track.found[usable]
    moving = found[:-1] & found[1:]
    jump = max(4.0 * _usual(dv, moving[1:] & moving[:-1]), 2.0)
    limit = max(4.0 * _usual(speed, moving), 0.5 * track.diameter)
    return [int(usable[k + 1]) for k in range(len(dv)) if dv[k] > jump and max(speed[k], speed[k + 1]) <= limit]


def _pieces(track: Track, teleports: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """Free-flight candidates: the usable track cut at bounces, teleports and long gaps; and the bounce
    frame between each piece and the next (-1 where the cut is not a bounce). Frames at rest (it landed,
    or waits to be launched) are no flight."""
    seen = np.flatnonzero(track.present & ~track.border)
    resting = set()
    if len(seen) >= 2:
        speed = np.hypot(np.diff(track.wx[seen]), np.diff(track.wy[seen])) / np.diff(seen) / track.diameter
        after = np.append(speed, speed[-1])  # each frame's step on (the last frame's: the step into it)
        resting = set(seen[after < REST_SPEED].tolist())
    usable = np.array([i for i in np.flatnonzero(track.found & ~track.border) if i not in resting], int)
    if len(usable) < 4:
        return [], []
    y = track.wy[usable]
    v = np.diff(y) / np.diff(usable)  # px / frame
    dv = np.diff(v)
    jump = max(4.0 * float(np.median(np.abs(dv))), 2.0) if len(dv) else float("inf")
    bounces = {k for k in range(1, len(usable) - 1) if v[k - 1] * v[k] < 0 and abs(v[k] - v[k - 1]) > jump}
    gaps = np.diff(usable)
    cut_after = {
        k
        for k, g in enumerate(gaps)
        if g > 3 or usable[k + 1] in teleports or resting & set(range(usable[k] + 1, usable[k + 1]))
    }
    pieces, current, between = [], [], []
    for k in range(len(usable)):
        if k in bounces:
            pieces.append(current)
            between.append(int(usable[k]))
            current = []
            continue
        current.append(int(usable[k]))
        if k in cut_after:
            pieces.append(current)
            between.append(-1)
            current = []
    pieces.append(current)
    return [np.array(p) for p in pieces], between


def gravity_energy(track: Track, teleports: list[int], fps: float) -> dict:
    """Gravity over the track's ballistic pieces (one shared downward acceleration), energy across its bounces.

    A piece is ballistic when a constant acceleration explains most of what a straight line
    misses: a thrown or falling object; not a balloon rising steadily, a car or a walker.
    """
    pieces, between = _pieces(track, teleports)
    h = track.size[0]
    wy, wx = track.wy, track.wx
    diameter = track.diameter
    airborne = max(3.0, 0.02 * h, 0.25 * diameter)
    flight = [i for i, p in enumerate(pieces) if len(p) >= 4 and np.ptp(wy[p]) >= airborne]
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
        target[row : row + len(p)] = wy[p]
        row += len(p)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    lin_coef, *_ = np.linalg.lstsq(design[:, 1:], target, rcond=None)
    lin_resid = target - design[:, 1:] @ lin_coef
    a = float(coef[0])  # px / frame^2, + is down
    sse, sse_lin = float(resid @ resid), float(lin_resid @ lin_resid)
    explained = max(0.0, 1.0 - sse / sse_lin) if sse_lin > 1e-9 else 0.0
    rms = math.sqrt(sse / n)
    out.update(
        {
            "acceleration_px_per_frame2": round(a, 4),
            "acceleration_heights_per_s2": round(a * fps * fps / h, 3),
            "explained": round(explained, 4),
            "fit_rms_px": round(rms, 3),
            "flight_pieces": [[int(pieces[j][0]), int(pieces[j][-1])] for j in flight],
        }
    )
    if explained < BALLISTIC and rms < TAU_GRAVITY_FIT * max(diameter, 1.0):
        # A straight path that one acceleration does not bend: steady motion, not a flight.
        out["gravity_reason"] = "not ballistic: moves at a steady speed, no acceleration to judge"
        out["energy_reason"] = "not ballistic: no flight to bounce from"
        return out
    direction = 0.5 + 0.5 * math.copysign(1.0, a) * explained
    out["gravity"] = direction * soft(rms / max(diameter, 1.0), TAU_GRAVITY_FIT)
    # energy across bounces between consecutive fitted pieces
    params = {}
    for col, j in enumerate(flight):
        p = pieces[j]
        vx = np.polyfit(p.astype(float), wx[p], 1)[0] if len(p) >= 2 else 0.0
        params[j] = (float(coef[1 + 2 * col]), float(coef[2 + 2 * col]), float(vx), p)
    ratios, frames = [], []
    for j in range(len(pieces) - 1):
        bounce = between[j]
        if bounce < 0 or j not in params or (j + 1) not in params:
            continue
        (b0, c0, vx0, p0), (b1, c1, vx1, p1) = params[j], params[j + 1]
        ys = np.concatenate([wy[p0], wy[p1], [wy[bounce]]])
        contact = float(ys.max() if a > 0 else ys.min())
        e0 = 0.5 * (vx0**2 + b0**2) + a * (contact - c0)
        e1 = 0.5 * (vx1**2 + b1**2) + a * (contact - c1)
        if e0 > 1e-6:
            ratios.append(e1 / e0)
            frames.append(bounce)
    if ratios:
        out["energy"] = float(np.prod([soft(max(0.0, r - 1.05), TAU_ENERGY) for r in ratios]))
        out["energy_ratios"] = [round(r, 3) for r in ratios]
        out["energy_gains"] = [f for f, r in zip(frames, ratios, strict=True) if r > 1.05 + TAU_ENERGY]
    else:
        out["energy_reason"] = "no bounce between free-flight pieces"
    return out


def mass(track: Track) -> tuple[float | None, dict]:
    """WorldModelBench's mass check: the object's area holds (robust coefficient of variation), and
    does not step to another size (median log area over `STEP_SPAN` frames before against after)."""
    usable = track.found & ~track.border
    areas = track.area[usable]
    if len(areas) < MIN_TRACK_FRAMES:
        return None, {"mass_reason": "object away from the border in too few frames"}
    p10, p50, p90 = np.percentile(areas, [10, 50, 90])
    cv = float((p90 - p10) / (2.56 * p50))
    log = np.log(areas)
    steps = [
        abs(np.median(log[k - STEP_SPAN : k]) - np.median(log[k : k + STEP_SPAN]))
        for k in range(STEP_SPAN, len(log) - STEP_SPAN + 1)
    ]
    step = float(max(steps, default=0.0))
    value = min(soft(cv, TAU_MASS), soft(max(0.0, step - STEP_FREE), TAU_STEP))
    return value, {"area_cv": round(cv, 4), "area_step": round(step, 4), "area_median_px": float(p50)}


def starts(track: Track, occluders: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """Frames where the object, at rest, moves off at once by itself (no other moving thing touches it),
    and frames where it stops at once from moving (a landing, an impact). Forwards, a stop is common
    and a start needs a cause: played backwards, every stop is a start with none."""
    usable = np.flatnonzero(track.present & ~track.border)
    if len(usable) < 4:
        return [], []
    step = np.diff(usable)
    speed = np.hypot(np.diff(track.wx[usable]), np.diff(track.wy[usable])) / step / track.diameter
    rest = (speed < REST_SPEED) & (step == 1)
    abrupt = (speed > ABRUPT) & (step == 1)
    began, stopped = [], []
    for k in range(1, len(speed)):
        if abrupt[k] and rest[max(0, k - 2) : k].all() and not _hidden(track, int(usable[k]), occluders):
            began.append(int(usable[k + 1]))
        if abrupt[k - 1] and rest[k : k + 2].all():
            stopped.append(int(usable[k]))
    return began, stopped
