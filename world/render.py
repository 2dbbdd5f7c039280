"""Frames of a scene: a textured background per setting, seen by a static or panning camera, and the object.

Everything is defined in world units, so one scene renders the same at 64x64 and 128x128. A `style`
(`world.styles`) changes the background only; without one the frames are the plain world's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from world.scene import GROUND, Scene
from world.styles import check_style, studio_backdrop
from world.vocabulary import COLORS

TEXTURE_CELLS = 12  # noise cells per frame height

# setting -> (sky at the top, sky at the horizon, ground); no sky as pale as a white object
PALETTES = {
    "grass": ((100, 165, 235), (150, 195, 240), (70, 125, 45)),
    "sand": ((140, 195, 235), (170, 205, 235), (205, 180, 130)),
    "night": ((12, 16, 40), (30, 34, 70), (38, 38, 52)),
    "room": ((135, 135, 140), (135, 135, 140), (92, 92, 98)),
}


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, H, W) bool: the object
    centers: np.ndarray  # (T, 2) the object's centre in pixels (x, y), in the frame
    positions: np.ndarray  # (T, 2) world x and height above the ground
    camera: np.ndarray  # (T,) the view's left edge in world units
    scene: Scene
    fps: float


def _noise(rng: np.random.Generator, width: float, height_px: int, width_px: int, cells: float) -> np.ndarray:
    """Smooth value noise in [-1, 1] over `width` frame heights, `cells` per frame height."""
    grid = rng.uniform(-1, 1, (max(2, round(cells)) + 1, max(2, round(width * cells)) + 1)).astype(np.float32)
    return cv2.resize(grid, (width_px, height_px), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def background(scene: Scene, world_width: float, size: int, style: str | None = None) -> np.ndarray:
    """(size, round(world_width * size), 3) float RGB of the setting, `world_width` frame heights wide."""
    rng = np.random.default_rng(scene.texture_seed)
    h, w = size, max(2, round(world_width * size))
    if style == "studio":
        return studio_backdrop(h, w, round(GROUND * h))
    top, horizon, ground = (np.array(c, np.float32) for c in PALETTES[scene.setting])
    g = round(GROUND * h)
    rows = np.linspace(0, 1, g, dtype=np.float32)[:, None, None]
    sky = np.broadcast_to(top + (horizon - top) * rows, (g, w, 3)).copy()
    floor = np.broadcast_to(ground, (h - g, w, 3)).copy()
    fine = _noise(rng, world_width, h, w, TEXTURE_CELLS * 2)
    coarse = _noise(rng, world_width, h, w, TEXTURE_CELLS / 3)
    xs = np.arange(w, dtype=np.float32)[None, :] / h  # world units
    ys = np.arange(h - g, dtype=np.float32)[:, None] / h
    if scene.setting == "grass":
        # Faint clouds: texture for a pan to move, never as bright as a white object.
        clouds = np.clip(coarse[:g] * 1.6 - 0.3, 0, 1)[..., None] * 0.35
        sky = sky * (1 - clouds) + np.array([230, 238, 250], np.float32) * clouds
        floor += (fine[g:] * 18 + coarse[g:] * 10)[..., None] * np.array([0.6, 1.0, 0.4], np.float32)
    elif scene.setting == "sand":
        ripples = np.sin(xs * 40 + ys * 90 + coarse[g:] * 3)
        floor += (ripples * 9 + fine[g:] * 8)[..., None]
    elif scene.setting == "night":
        stars = rng.random((g, w)) < 0.012
        sky[stars] = rng.uniform(90, 150, (int(stars.sum()), 1))
        floor += (fine[g:] * 7)[..., None]
    else:  # a grey room: wall panels and floor tiles
        seams = (np.abs((xs * 4) % 1 - 0.5) > 0.46).astype(np.float32)
        sky -= np.broadcast_to(seams, (g, w))[..., None] * 22
        tiles = ((np.abs((xs * 5) % 1 - 0.5) > 0.45) | (np.abs((ys * 10) % 1 - 0.5) > 0.4)).astype(np.float32)
        floor -= tiles[..., None] * 14
        floor += (fine[g:] * 4)[..., None]
    return np.concatenate([sky, floor]).clip(0, 255)


def _view(panorama: np.ndarray, left_px: float, width: int) -> np.ndarray:
    """`width` columns of the panorama starting at a fractional column (linear interpolation)."""
    i = int(np.floor(left_px))
    f = left_px - i
    return panorama[:, i : i + width] * (1 - f) + panorama[:, i + 1 : i + 1 + width] * f


def _draw(image: np.ndarray, scene: Scene, cx: float, cy: float, r: float, height: float) -> np.ndarray:
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    # A soft shadow on the ground, fainter as the object rises.
    gy = GROUND * h
    shadow = np.clip(1 - ((xx - cx) / (r * 1.1)) ** 2 - ((yy - gy) / (r * 0.3)) ** 2, 0, 1)
    image *= (1 - 0.4 * shadow / (1 + 6 * height))[..., None]
    color = np.array(COLORS[scene.color], np.float32)
    dx, dy = (xx - cx) / r, (yy - cy) / r
    if scene.object == "ball":
        cover = np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)
        shade = 0.93 - 0.12 * (dx * 0.6 + dy * 0.8)  # lit from the top left
        glint = np.clip(1 - np.hypot(dx + 0.35, dy + 0.4) / 0.25, 0, 1)[..., None]
        paint = color * shade[..., None] * (1 - glint * 0.5) + 255 * glint * 0.5
    else:
        cover = np.clip(r - np.abs(xx - cx) + 0.5, 0, 1) * np.clip(r - np.abs(yy - cy) + 0.5, 0, 1)
        edge = np.maximum(np.abs(dx), np.abs(dy)) > 0.8
        paint = color * np.where(edge, 0.78, np.where(dy < -0.3, 1.0, 0.9))[..., None]
    cover = cover[..., None]
    return image * (1 - cover) + np.clip(paint, 0, 255) * cover, cover[..., 0] > 0.5


def render(scene: Scene, num_frames: int, size: int, fps: float = 16.0, style: str | None = None) -> Clip:
    """The clip of `scene`: `num_frames` frames of `size` x `size` at `fps`, in `style` (None: the world's own)."""
    check_style(style)
    positions = scene.simulate(num_frames, fps)
    camera = scene.camera_x(num_frames, fps)
    left = float(camera.min())
    panorama = background(scene, float(camera.max() - left) + 1.0 + 2.0 / size, size, style)
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    masks = np.zeros((num_frames, size, size), bool)
    centers = np.zeros((num_frames, 2))
    for i, ((x, y), cam) in enumerate(zip(positions, camera, strict=True)):
        view = _view(panorama, (cam - left) * size, size)
        cx, cy, r = (x - cam) * size, (GROUND - y - scene.size) * size, scene.size * size
        image, masks[i] = _draw(view.astype(np.float32), scene, cx, cy, r, y)
        frames[i] = np.round(image).astype(np.uint8)
        centers[i] = (cx, cy)
    return Clip(frames, masks, centers, positions, camera, scene, fps)
