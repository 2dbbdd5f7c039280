"""Dense optical flow and what the pixels say: warping error, flicker, motion smoothness, and how much the scene moves.

Flow is Farneback's, forward and backward between consecutive frames, on grayscale frames of at
most `FLOW_SIZE` px. The camera's part of it (camera.py) is taken out before anything asks
whether a pixel moved: flicker is measured on the background that stays put once the camera is
followed, and `dynamics` counts only the scene's own motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from monitoring.physics.camera import CameraPath
from monitoring.physics.parallel import pmap

MOVING_PX = 0.5  # px per frame of flow (camera removed) that count as motion
STATIC_SHARE = 0.1  # pairs with less static background than this have no flicker reading
WORST = 0.02  # the warping error's worst share of pixels: where a local break shows
MID_GREY, DARK = 128.0, 16.0  # flicker is scaled to mid-grey; DARK keeps black scenes from exploding it
TEXTURE = 1e-4  # smallest eigenvalue of the structure tensor (OpenCV's scale) where flow is measurable
FASTEST = 0.05  # dynamics: the mean speed of this share of the fastest pixels (VBench's dynamic degree)
MIN_OBJECT_PX = 6  # fewer of a tracked object's pixels in a frame: no reading of its own warping error
GUIDE_MIN_PX = 1.0  # a track's step under this is left to the coarse-to-fine flow
GUIDE_MARGIN = 10  # px around an object's box (beyond its step) that its guided flow is refined on


@dataclass
class Guide:
    """Tracked objects' regions and centroids (at the flow scale): their flow starts from the track's displacement."""

    regions: np.ndarray  # (T, h, w) bool
    cx: np.ndarray  # (T,) NaN where not found
    cy: np.ndarray
    found: np.ndarray | None = None  # (T,) bool: detected there, away from the border (not carried on at rest)


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)


def _guided(a: np.ndarray, b: np.ndarray, flow: np.ndarray, region: np.ndarray, shift: tuple[float, float]):
    """`flow` refined on the finest level only, after setting the object's region to the track's displacement.

    Coarse-to-fine flow loses a small object that moves more than its own size per frame. The refinement
    runs on the object's surroundings only (its box, grown by the step and Farneback's window) and is
    kept on the object and a rim around it.
    """
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if not len(rows) or abs(shift[0]) + abs(shift[1]) < GUIDE_MIN_PX:
        return flow
    h, w = region.shape
    grow = int(abs(shift[0]) + abs(shift[1])) + GUIDE_MARGIN
    y0, y1 = max(0, rows[0] - grow), min(h, rows[-1] + 1 + grow)
    x0, x1 = max(0, cols[0] - grow), min(w, cols[-1] + 1 + grow)
    init = flow[y0:y1, x0:x1].copy()
    inside = region[y0:y1, x0:x1]
    init[inside] = shift
    refined = cv2.calcOpticalFlowFarneback(
        a[y0:y1, x0:x1], b[y0:y1, x0:x1], init, 0.5, 0, 9, 3, 5, 1.1, cv2.OPTFLOW_USE_INITIAL_FLOW
    )
    keep = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    out = flow.copy()
    out[y0:y1, x0:x1][keep] = refined[keep]
    return out


def sample(image: np.ndarray, grid: np.ndarray, flow: np.ndarray) -> np.ndarray:
    coords = grid + flow
    return cv2.remap(image, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _unlit(before: np.ndarray, after: np.ndarray, where: np.ndarray) -> np.ndarray:
    """|after - before| per pixel once a change of light (a gain and an offset, fitted by least squares
    over `where`) is taken out."""
    x, y = before[where].ravel(), after[where].ravel()
    if x.size < 2 or np.ptp(x) == 0:
        return np.abs(after - before).mean(-1)
    mx, my = x.mean(), y.mean()
    gain = float(((x - mx) * (y - my)).sum() / ((x - mx) ** 2).sum())
    return np.abs(after - (gain * before + (my - gain * mx))).mean(-1)


def _top_mean(values: np.ndarray, share: float) -> float:
    """Mean of the largest `share` of `values` (at least one)."""
    k = max(1, int(share * values.size))
    return float(np.partition(values, values.size - k)[-k:].mean())


def flows(gray: np.ndarray, guides: list[Guide]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Forward flows (on frame i, to i + 1) and backward ones (on frame i + 1, to i)."""
    t = len(gray)

    def guided(i: int) -> tuple[np.ndarray, np.ndarray]:
        f, b = fwd[i], bwd[i]
        for g in guides:
            if not (np.isnan(g.cx[i]) or np.isnan(g.cx[i + 1])):
                dx, dy = g.cx[i + 1] - g.cx[i], g.cy[i + 1] - g.cy[i]
                f = _guided(gray[i], gray[i + 1], f, g.regions[i], (dx, dy))
                b = _guided(gray[i + 1], gray[i], b, g.regions[i + 1], (-dx, -dy))
        return f, b

    fwd = pmap(_flow, gray[:-1], gray[1:])
    bwd = pmap(_flow, gray[1:], gray[:-1])
    if guides:
        fwd, bwd = map(list, zip(*pmap(guided, range(t - 1)), strict=True))
    return fwd, bwd


def measure(small: np.ndarray, camera: CameraPath, objects: np.ndarray | None, guides: list[Guide]) -> dict:
    """Per pair: warping error, flicker of the still background, moving share and the fastest pixels'
    speed (camera removed); per middle frame: the interpolation miss."""
    t, h, w, _ = small.shape
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small])
    colour = small.astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.dstack([xs, ys])
    camera = camera.scaled((h, w))
    fwd, bwd = flows(gray, guides)

    still_camera = not camera.moving
    zero = np.zeros((h, w, 2), np.float32)

    def pair(i: int) -> dict:
        f, b = fwd[i], bwd[i]
        out: dict = {}
        # Warping error over the pixels that pass the forward-backward occlusion check (Lai et al. 2018)
        b_at = sample(b, grid, f)
        target = grid + f
        inside = (target[..., 0] >= 0) & (target[..., 0] <= w - 1) & (target[..., 1] >= 0) & (target[..., 1] <= h - 1)
        consistent = ((f + b_at) ** 2).sum(-1) < 0.01 * ((f**2).sum(-1) + (b_at**2).sum(-1)) + 0.5
        valid = inside & consistent
        enough = valid.mean() > 0.05
        warped = sample(colour[i + 1], grid, f)
        diff = np.abs(colour[i] - warped).mean(-1)
        out["warp"] = float(diff[valid].mean()) if enough else float(diff.mean())
        # The same error once the pair's overall change of light is taken out: what a break is read from
        # (a fade or a flicker is the flicker reading's to judge, not a break in what the frames show)
        delta = _unlit(colour[i], warped, valid if enough else inside)
        out["structure"] = float(delta[valid].mean()) if enough else float(delta.mean())
        seen = delta[inside]
        out["worst"] = _top_mean(seen, WORST) if seen.size else 0.0
        # ... and over each tracked object's own pixels, where a break that only it shows stands out
        out["objects"] = []
        for g in guides:
            region = g.regions[i] & inside
            moved = g.found is None or (g.found[i] and g.found[i + 1])
            out["objects"].append(float(delta[region].mean()) if moved and region.sum() >= MIN_OBJECT_PX else np.nan)

        # The scene's own motion: flow minus the camera's
        if still_camera:
            cam_f = cam_b = zero
        else:
            cam_f = camera.field(i, (h, w))
            cam_b = CameraPath([cv2.invertAffineTransform(camera.steps[i])], (h, w)).field(0, (h, w))
        speed_f = np.sqrt(((f - cam_f) ** 2).sum(-1))
        speed_b = np.sqrt(((b - cam_b) ** 2).sum(-1))
        moving = (speed_f > MOVING_PX) | (speed_b > MOVING_PX)
        out["moving_share"] = float(moving.mean())
        # Flow is only measured where there is texture to follow (a flat sky moves as nothing).
        textured = valid & (cv2.cornerMinEigenVal(gray[i], 3) > TEXTURE)
        textured[:3], textured[-3:], textured[:, :3], textured[:, -3:] = False, False, False, False  # content enters
        out["fastest"] = _top_mean(speed_f[textured], FASTEST) if textured.mean() > 0.01 else 0.0

        # Flicker: the background that stays put once the camera is followed, frame to frame
        still = ~moving
        if objects is not None:
            still &= ~(objects[i] | objects[i + 1])
        if not still_camera:
            cam_target = grid + cam_f
            still &= (cam_target[..., 0] >= 0) & (cam_target[..., 0] <= w - 1)
            still &= (cam_target[..., 1] >= 0) & (cam_target[..., 1] <= h - 1)
        out["flicker"], out["light"] = float("nan"), None
        if still.mean() >= STATIC_SHARE:
            followed = colour[i + 1] if still_camera else sample(colour[i + 1], grid, cam_f)
            change = (followed - colour[i]).mean(-1)[still]
            # in levels at mid-grey: the same flicker of the light is a smaller step in a dark scene
            unit = MID_GREY / (0.5 * float((colour[i] + followed).mean(-1)[still].mean()) + DARK)
            shift = float(np.median(change))
            out["light"] = shift * unit
            out["flicker"] = float(np.abs(change - shift).mean()) * unit
        return out

    pairs = pmap(pair, range(t - 1))
    warp, structure, worst, flicker, moving_share, fastest = (
        [p[k] for p in pairs] for k in ("warp", "structure", "worst", "flicker", "moving_share", "fastest")
    )
    objects_error = [[p["objects"][k] for p in pairs] for k in range(len(guides))]
    lighting = [(i, p["light"]) for i, p in enumerate(pairs) if p["light"] is not None]  # the background's change

    # The light may change, even quickly and in uneven steps (a fade, a lamp switched on); it may not go
    # back and forth. A pair's overall change counts as flicker as far as a neighbouring pair takes it back.
    shifts = [v for _, v in lighting]
    for k, (i, v) in enumerate(lighting):
        back = [
            2 * min(abs(v), abs(u)) if u * v < 0 else 0.0 for u in shifts[max(0, k - 1) : k] + shifts[k + 1 : k + 2]
        ]
        flicker[i] += float(np.mean(back)) if back else 0.0
    flicker = [f for f in flicker if f == f]

    interpolation = []
    for i in range(1, t - 1):
        ahead, back = fwd[i], bwd[i - 1]  # both on frame i's grid: to i + 1 and to i - 1
        speed = np.sqrt(((0.5 * (ahead - back)) ** 2).sum(-1))
        moving = speed > MOVING_PX
        if moving.mean() < 0.002:
            continue
        # positions x(i-1), x(i), x(i+1) of a pixel: the midpoint of its neighbours misses x(i) by |a| / 2
        miss = 0.5 * np.sqrt(((ahead + back)[moving] ** 2).sum(-1))
        interpolation.append(float(np.median(miss)))
    return {
        "warp": warp,
        "structure": structure,
        "worst": worst,
        "flicker": flicker,
        "interpolation": interpolation,
        "moving_share": moving_share,
        "fastest": fastest,
        "objects": objects_error,
    }
