"""Synthetic clips with known physics (a ball that bounces or rolls, and violations of each law) for the scorer's
tests and benchmark."""

from __future__ import annotations

import math

import cv2
import numpy as np

PLAUSIBLE = ("bounce", "roll", "rise", "slide", "two_balls", "land")
VIOLATIONS = (
    "reversed_gravity",
    "teleport",
    "flicker",
    "size_change",
    "mass_change",
    "energy_gain",
    "vanish",
    "disappear",
    "stutter",
    "reversed",
)
KINDS = (*PLAUSIBLE, *VIOLATIONS, "static")
# rise: a balloon going up at a steady speed; slide: sliding to a stop under friction;
# two_balls: one bounces while another rolls the other way; land: dropped from rest, it lands
# dead and stays; mass_change: the ball grows by half mid-flight; disappear: gone mid-flight for
# good; stutter: a frame held three frames more, then the bounce where it had got to; reversed:
# `land` played backwards (a ball at rest leaps up by itself).


def _background(size: int, rng: np.random.Generator, width: int | None = None) -> np.ndarray:
    width = width or size
    texture = cv2.GaussianBlur(rng.random((size, width)).astype(np.float32), (0, 0), size / 40)
    texture = (texture - texture.mean()) / (texture.std() + 1e-6) * 14
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    sky = np.array([110, 150, 200], np.float32) * (1 - 0.3 * rows) + np.zeros((1, width, 1), np.float32)
    ground = np.array([120, 95, 60], np.float32)
    floor = int(0.86 * size)
    image = np.broadcast_to(sky, (size, width, 3)).copy()
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


def _ball(image: np.ndarray, x: float, y: float, radius: float, colour, highlight) -> None:
    """A ball with a highlight, drawn at sub-pixel precision (OpenCV's shift of 4 bits)."""
    cv2.circle(image, (round(x * 16), round(y * 16)), round(radius * 16), colour, -1, cv2.LINE_AA, shift=4)
    spot = (round((x - 0.35 * radius) * 16), round((y - 0.35 * radius) * 16))
    cv2.circle(image, spot, round(0.3 * radius * 16), highlight, -1, cv2.LINE_AA, shift=4)


def synthetic_clip(
    kind: str, frames: int = 33, size: int = 128, fps: float = 16, seed: int = 0, pan: float = 0.0
) -> np.ndarray:
    """Render a deterministic (T, size, size, 3) uint8 clip of `kind` (one of KINDS); `pan` moves the
    camera right by that many frame widths per second (the scene, ball included, is the same)."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic clip kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "reversed":
        return synthetic_clip("land", frames, size, fps, seed, pan)[::-1].copy()
    if kind == "stutter":
        clip = synthetic_clip("bounce", frames, size, fps, seed, pan)
        clip[frames // 2 - 2 : frames // 2 + 1] = clip[frames // 2 - 3]
        return clip
    rng = np.random.default_rng(seed)
    travel = abs(pan) * size * (frames - 1) / fps  # px the camera moves over the clip
    margin = int(math.ceil(travel)) + 2 if pan else 0
    wide = _background(size, rng, size + margin)
    times = np.arange(frames) / fps
    radius = 0.0625 * size
    floor = 0.86 * size - radius  # the centre's lowest point
    g = 2.45 * size  # px / s^2
    x = 0.2 * size + 0.3 * size * times
    if kind == "roll":
        x = 0.15 * size + 0.35 * size * times
        y = np.full(frames, floor)
    elif kind == "rise":
        x = 0.4 * size + 0.05 * size * times
        y = 0.75 * size - 0.3 * size * times
    elif kind == "slide":
        stop = 0.6 / 0.35  # s: v0 / deceleration, in frame sizes per s and per s^2
        t = np.minimum(times, stop)
        x = 0.15 * size + size * (0.6 * t - 0.5 * 0.35 * t * t)
        y = np.full(frames, floor)
    elif kind == "land":
        x = np.full(frames, 0.45 * size)
        y = np.minimum(0.25 * size + 0.5 * g * times**2, floor)
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
    if kind == "mass_change":
        radii[frames // 2 :] *= 1.5
    hidden = np.zeros(frames, bool)
    if kind == "vanish":
        hidden[int(0.55 * frames) : int(0.7 * frames)] = True
    if kind == "disappear":
        hidden[int(0.6 * frames) :] = True
    offsets = np.zeros(frames)
    if kind == "flicker":
        offsets = (-1.0) ** np.arange(frames) * rng.uniform(12, 24, frames)

    clip = np.empty((frames, size, size, 3), np.uint8)
    start = (travel + 1 if pan < 0 else 1.0) if pan else 0.0
    for i in range(frames):
        left = start + pan * size * times[i]  # the view's left edge on the wide background
        view = np.float32([[1, 0, left], [0, 1, 0]])
        image = cv2.warpAffine(wide, view, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        x_i = x[i] - (left - start)  # the ball stays where it is in the scene
        if kind != "static" and not hidden[i]:
            _ball(image, x_i, y[i], radii[i], (215, 45, 40), (240, 130, 120))
        if kind == "two_balls":
            _ball(
                image,
                0.85 * size - 0.3 * size * times[i] - (left - start),
                floor,
                radius,
                (40, 60, 210),
                (130, 150, 240),
            )
        image += rng.normal(0.0, 1.0, image.shape).astype(np.float32) + offsets[i]
        clip[i] = np.clip(image, 0, 255).round().astype(np.uint8)
    return clip
