"""Synthetic clips with known physics (a ball that bounces or rolls, and violations of each law) for the scorer's
tests and benchmark."""

from __future__ import annotations

import math

import cv2
import numpy as np

KINDS = ("bounce", "roll", "reversed_gravity", "teleport", "flicker", "size_change", "energy_gain", "vanish", "static")
PLAUSIBLE = ("bounce", "roll")
VIOLATIONS = ("reversed_gravity", "teleport", "flicker", "size_change", "energy_gain", "vanish")


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    texture = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / 40)
    texture = (texture - texture.mean()) / (texture.std() + 1e-6) * 14
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    sky = np.array([110, 150, 200], np.float32) * (1 - 0.3 * rows) + np.zeros((1, size, 1), np.float32)
    ground = np.array([120, 95, 60], np.float32)
    floor = int(0.86 * size)
    image = np.broadcast_to(sky, (size, size, 3)).copy()
    image[floor:] = ground
    image[floor - 1 : floor + 1] = (60, 50, 40)
    return np.clip(image + texture[..., None], 0, 255)


def _bounce_track(times: np.ndarray, y0: float, floor: float, g: float, e: float) -> np.ndarray:
    """Heights of a ball dropped from rest at y0 (image y grows down) onto `floor`, restitution e."""
    out = np.empty_like(times)
    t_now, y, v = 0.0, y0, 0.0
    for k, t in enumerate(times):
        while True:
            # time to floor from (y, v): y + v s + g s^2 / 2 = floor
            disc = v * v + 2 * g * (floor - y)
            s = (-v + math.sqrt(max(0.0, disc))) / g
            if t_now + s > t or s <= 1e-9:
                break
            t_now += s
            y, v = floor, -e * (v + g * s)
        s = t - t_now
        out[k] = y + v * s + 0.5 * g * s * s
    return out


def synthetic_clip(kind: str, frames: int = 33, size: int = 128, fps: float = 16, seed: int = 0) -> np.ndarray:
    """Render a deterministic (T, size, size, 3) uint8 clip of `kind` (one of KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic clip kind {kind!r}; expected one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    background = _background(size, rng)
    times = np.arange(frames) / fps
    radius = 0.0625 * size
    floor = 0.86 * size - radius  # the centre's lowest point
    g = 2.45 * size  # px / s^2
    x = 0.2 * size + 0.3 * size * times
    if kind == "roll":
        x = 0.15 * size + 0.35 * size * times
        y = np.full(frames, floor)
    elif kind == "energy_gain":
        y = _bounce_track(times, 0.47 * size, floor, g, 1.3)
    else:
        y = _bounce_track(times, 0.19 * size, floor, g, 0.8)
    if kind == "reversed_gravity":
        y = size - y
    if kind == "teleport":
        x = np.where(np.arange(frames) >= frames // 2, x - 0.35 * size, x)
    radii = np.full(frames, radius)
    if kind == "size_change":
        radii = radius * (0.75 + np.arange(frames) / max(1, frames - 1))
    hidden = np.zeros(frames, bool)
    if kind == "vanish":
        hidden[int(0.55 * frames) : int(0.7 * frames)] = True
    offsets = np.zeros(frames)
    if kind == "flicker":
        offsets = (-1.0) ** np.arange(frames) * rng.uniform(12, 24, frames)

    clip = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        image = background.copy()
        if kind != "static" and not hidden[i]:
            centre = (round(x[i] * 16), round(y[i] * 16))
            cv2.circle(image, centre, round(radii[i] * 16), (215, 45, 40), -1, cv2.LINE_AA, shift=4)
            spot = (round((x[i] - 0.35 * radii[i]) * 16), round((y[i] - 0.35 * radii[i]) * 16))
            cv2.circle(image, spot, round(0.3 * radii[i] * 16), (240, 130, 120), -1, cv2.LINE_AA, shift=4)
        image += rng.normal(0.0, 1.0, image.shape).astype(np.float32) + offsets[i]
        clip[i] = np.clip(image, 0, 255).round().astype(np.uint8)
    return clip
