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

MOVING_PX = 0.5  # px per frame of flow (camera removed) that count as motion
STATIC_SHARE = 0.1  # pairs with less static background than this have no flicker reading
WORST = 0.02  # the warping error's worst share of pixels: where a local break shows
MID_GREY, DARK = 128.0, 16.0  # flicker is scaled to mid-grey; DARK keeps black scenes from exploding it
TEXTURE = 1e-4  # smallest eigenvalue of the structure tensor (OpenCV's scale) where flow is measurable
FASTEST = 0.05  # dynamics: the mean speed of this share of the fastest pixels (VBench's dynamic degree)


@dataclass
class Guide:
    """Tracked objects' regions and centroids (at the flow scale): their flow starts from the track's displacement."""

    regions: np.ndarray  # (T, h, w) bool
    cx: np.ndarray  # (T,) NaN where not found
    cy: np.ndarray


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)


def _guided(a: np.ndarray, b: np.ndarray, flow: np.ndarray, region: np.ndarray, shift: tuple[float, float]):
    """`flow` refined on the finest level only, after setting the object's region to the track's displacement.

    Coarse-to-fine flow loses a small object that moves more than its own size per frame.
    """
    init = flow.copy()
    init[region] = shift
    return cv2.calcOpticalFlowFarneback(a, b, init, 0.5, 0, 9, 3, 5, 1.1, cv2.OPTFLOW_USE_INITIAL_FLOW)


def sample(image: np.ndarray, grid: np.ndarray, flow: np.ndarray) -> np.ndarray:
    coords = grid + flow
    return cv2.remap(image, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _unlit(before: np.ndarray, after: np.ndarray, where: np.ndarray) -> np.ndarray:
    """|after - before| per pixel once a change of light (a gain and an offset, fitted by least squares
    over `where`) is taken out."""
    x, y = before[where].ravel(), after[where].ravel()
    if x.size < 2 or np.ptp(x) == 0:
        return np.abs(after - before).mean(-1)
    gain, offset = np.polyfit(x, y, 1)
    return np.abs(after - (gain * before + offset)).mean(-1)


def flows(gray: np.ndarray, guides: list[Guide]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Forward flows (on frame i, to i + 1) and backward ones (on frame i + 1, to i)."""
    t = len(gray)
    fwd = [_flow(gray[i], gray[i + 1]) for i in range(t - 1)]
    bwd = [_flow(gray[i + 1], gray[i]) for i in range(t - 1)]
    for g in guides:
        for i in range(t - 1):
            if np.isnan(g.cx[i]) or np.isnan(g.cx[i + 1]):
                continue
            dx, dy = g.cx[i + 1] - g.cx[i], g.cy[i + 1] - g.cy[i]
            fwd[i] = _guided(gray[i], gray[i + 1], fwd[i], g.regions[i], (dx, dy))
            bwd[i] = _guided(gray[i + 1], gray[i], bwd[i], g.regions[i + 1], (-dx, -dy))
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

    warp, structure, worst, flicker, moving_share, fastest = [], [], [], [], [], []
    lighting: list[tuple[int, float]] = []  # per pair, the still background's overall change
    for i in range(t - 1):
        f, b = fwd[i], bwd[i]
        # Warping error over the pixels that pass the forward-backward occlusion check (Lai et al. 2018)
        b_at = sample(b, grid, f)
        target = grid + f
        inside = (target[..., 0] >= 0) & (target[..., 0] <= w - 1) & (target[..., 1] >= 0) & (target[..., 1] <= h - 1)
        consistent = ((f + b_at) ** 2).sum(-1) < 0.01 * ((f**2).sum(-1) + (b_at**2).sum(-1)) + 0.5
        valid = inside & consistent
        diff = np.abs(colour[i] - sample(colour[i + 1], grid, f)).mean(-1)
        warp.append(float(diff[valid].mean()) if valid.mean() > 0.05 else float(diff.mean()))
        # The same error once the pair's overall change of light is taken out: what a break is read from
        # (a fade or a flicker is the flicker reading's to judge, not a break in what the frames show)
        delta = _unlit(colour[i], sample(colour[i + 1], grid, f), valid if valid.mean() > 0.05 else inside)
        structure.append(float(delta[valid].mean()) if valid.mean() > 0.05 else float(delta.mean()))
        seen = delta[inside]
        worst.append(float(np.sort(seen)[-max(1, int(WORST * seen.size)) :].mean()) if seen.size else 0.0)

        # The scene's own motion: flow minus the camera's
        cam_f = camera.field(i, (h, w))
        inverse = CameraPath([cv2.invertAffineTransform(camera.steps[i])], (h, w))
        cam_b = inverse.field(0, (h, w))
        speed_f = np.sqrt(((f - cam_f) ** 2).sum(-1))
        speed_b = np.sqrt(((b - cam_b) ** 2).sum(-1))
        moving = (speed_f > MOVING_PX) | (speed_b > MOVING_PX)
        moving_share.append(float(moving.mean()))
        # Flow is only measured where there is texture to follow (a flat sky moves as nothing).
        textured = valid & (cv2.cornerMinEigenVal(gray[i], 3) > TEXTURE)
        textured[:3], textured[-3:], textured[:, :3], textured[:, -3:] = (
            False,
            False,
            False,
            False,
        )  # edges: content enters
        reliable = speed_f[textured] if textured.mean() > 0.01 else np.zeros(1)
        top = np.sort(reliable)[-max(1, int(FASTEST * reliable.size)) :]
        fastest.append(float(top.mean()))

        # Flicker: the background that stays put once the camera is followed, frame to frame
        still = ~moving
        if objects is not None:
            still &= ~(objects[i] | objects[i + 1])
        cam_target = grid + cam_f
        still &= (cam_target[..., 0] >= 0) & (cam_target[..., 0] <= w - 1)
        still &= (cam_target[..., 1] >= 0) & (cam_target[..., 1] <= h - 1)
        if still.mean() >= STATIC_SHARE:
            followed = sample(colour[i + 1], grid, cam_f)
            change = (followed - colour[i]).mean(-1)[still]
            # in levels at mid-grey: the same flicker of the light is a smaller step in a dark scene
            unit = MID_GREY / (0.5 * float((colour[i] + followed).mean(-1)[still].mean()) + DARK)
            shift = float(np.median(change))
            lighting.append((i, shift * unit))
            flicker.append(float(np.abs(change - shift).mean()) * unit)
        else:
            flicker.append(float("nan"))

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
    }
