"""The camera's own motion between frames: a similarity transform (pan, tilt, zoom, roll) per pair.

Corners tracked with pyramidal Lucas-Kanade, kept where the backward track returns to its start,
then a RANSAC fit of a 4-parameter similarity (OpenCV's video-stabilisation recipe). A still camera
must stay exactly still, so the fit has to earn its place: it replaces the identity only when it
explains clearly more tracks than "nothing moved" does (a moving object must not become a pan).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from monitoring.physics.parallel import pmap

CORNERS = 300
MIN_CORNERS = 12  # fewer trackable corners (a flat frame): the camera is taken as still
FIT_TOLERANCE = 0.5  # px of reprojection error that count as explained, at the analysis scale
FIT_SHARE = 0.4  # a camera motion must explain at least this share of the tracked corners
IDENTITY_SHARE = 0.9  # the identity stays unless the fit explains 1 / 0.9 times as many tracks
MOVING = 0.15  # px per frame of camera displacement (mean over the frame) that count as a camera move


@dataclass
class CameraPath:
    steps: list[np.ndarray]  # (2, 3) per pair: frame i's coordinates -> frame i + 1's
    size: tuple[int, int]  # (h, w) of the frames it was measured on

    @property
    def moving(self) -> bool:
        return bool(self.speeds.max(initial=0.0) > MOVING)

    @cached_property
    def speeds(self) -> np.ndarray:
        """Mean displacement of a pixel by the camera alone, px per frame, per pair."""
        return np.array([float(np.abs(self.field(i, self.size)).sum(-1).mean()) for i in range(len(self.steps))])

    def scaled(self, size: tuple[int, int]) -> CameraPath:
        """The same path on frames resized to `size` (h, w)."""
        k = size[1] / self.size[1]
        steps = [np.hstack([s[:, :2], s[:, 2:] * k]) for s in self.steps]
        return CameraPath(steps, size)

    def field(self, i: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 2) displacement of each pixel of frame i by the camera, frame i -> i + 1."""
        h, w = size
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        s = self.steps[i].astype(np.float32)
        return np.dstack([s[0, 0] * xs + s[0, 1] * ys + s[0, 2] - xs, s[1, 0] * xs + s[1, 1] * ys + s[1, 2] - ys])

    def to_first(self) -> list[np.ndarray]:
        """(3, 3) per frame: frame i's coordinates -> frame 0's."""
        return list(self._to_first)

    @cached_property
    def _to_first(self) -> tuple[np.ndarray, ...]:
        out = [np.eye(3)]
        for s in self.steps:
            out.append(out[-1] @ np.linalg.inv(np.vstack([s, [0, 0, 1]])))
        return tuple(out)

    def summary(self) -> dict:
        if not self.steps:
            return {"moving": False}
        tx = np.array([s[0, 2] for s in self.steps])
        ty = np.array([s[1, 2] for s in self.steps])
        zoom = np.array([np.hypot(s[0, 0], s[1, 0]) for s in self.steps])
        return {
            "moving": self.moving,
            "pan_px_per_frame": round(float(tx.mean()), 3),
            "tilt_px_per_frame": round(float(ty.mean()), 3),
            "zoom_per_frame": round(float(zoom.mean()), 5),
            "speed_px_per_frame": round(float(self.speeds.mean()), 3),
        }


def _step(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    identity = np.eye(2, 3)
    corners = cv2.goodFeaturesToTrack(a, CORNERS, 0.01, 3, blockSize=5)
    if corners is None or len(corners) < MIN_CORNERS:
        return identity
    ahead, ok_a, _ = cv2.calcOpticalFlowPyrLK(a, b, corners, None, winSize=(9, 9), maxLevel=2)
    back, ok_b, _ = cv2.calcOpticalFlowPyrLK(b, a, ahead, None, winSize=(9, 9), maxLevel=2)
    good = (ok_a[:, 0] == 1) & (ok_b[:, 0] == 1) & (np.linalg.norm(back - corners, axis=-1)[:, 0] < FIT_TOLERANCE)
    src, dst = corners[good, 0], ahead[good, 0]
    if len(src) < MIN_CORNERS:
        return identity
    fit, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=FIT_TOLERANCE, maxIters=500, refineIters=10
    )
    if fit is None or int(inliers.sum()) < max(MIN_CORNERS, FIT_SHARE * len(src)):
        return identity  # no motion most of the frame agrees on (noise, or a frame that changed entirely)
    still = int((np.linalg.norm(dst - src, axis=-1) < FIT_TOLERANCE).sum())
    if still >= IDENTITY_SHARE * int(inliers.sum()):
        return identity
    return fit


def estimate_camera(gray: np.ndarray) -> CameraPath:
    """The camera path of (T, h, w) uint8 grayscale frames."""
    # Each frame brought to the same mean brightness: Lucas-Kanade assumes it, and flicker breaks it.
    level = gray.reshape(len(gray), -1).mean(1)
    steady = np.clip(gray.astype(np.float32) - (level - level.mean())[:, None, None], 0, 255).astype(np.uint8)
    return CameraPath(pmap(_step, steady[:-1], steady[1:]), gray.shape[1:3])
