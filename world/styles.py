"""Looks of the world other than its own: what a style adapter (a LoRA, `training/lora.py`) learns, and how
much of a look a clip's frames show.

"studio": every setting's background becomes a flat backdrop in one brand colour, a pink-magenta
wall over a darker floor of the same hue; the object, its shadow and its motion stay as they are.
Flat colour over whole 8x8 blocks is what the model's VAE carries best, and magenta is far from every
object colour and every setting's palette (sky, grass, sand, night, grey room), so it is read back
from frames without knowing the scene. Of the brand colours tried (magentas, teals, cyan), this one
keeps the most object colours right through the VAE: at 128x128 all of them; at 64x64 a blue object,
a few pixels wide, bleeds into the wall and reads as purple (teals turn yellow to green and purple
to blue instead).
"""

from __future__ import annotations

import numpy as np

STYLES = ("studio",)

STUDIO_WALL = (235, 120, 205)
STUDIO_FLOOR = (160, 70, 135)
# RGB distance from the wall or floor colour that counts as the backdrop: a decoded backdrop drifts by
# 10-30 levels; the nearest colours of the plain world are 65 (the purple object) and 70 (the grey
# room) away from the floor, 100 and more from the wall.
NEAR = 50.0


def check_style(style: str | None) -> None:
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def studio_backdrop(height: int, width: int, ground_row: int) -> np.ndarray:
    """(height, width, 3) float RGB: the wall above `ground_row`, the floor from it down."""
    out = np.empty((height, width, 3), np.float32)
    out[:ground_row] = STUDIO_WALL
    out[ground_row:] = STUDIO_FLOOR
    return out


def style_strength(frames: np.ndarray, style: str = "studio") -> float:
    """Share of the pixels that show the style's backdrop: about 0.95 on studio clips (the rest is the
    object and its shadow), 0 on the plain world's. frames: (T, H, W, 3) uint8 RGB, any size.

    Each pixel counts when it is within NEAR of the wall or the floor colour, whichever is nearer: a
    generated horizon a few rows off is still the backdrop.
    """
    check_style(style)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    f = frames.astype(np.float32)
    wall = np.linalg.norm(f - np.array(STUDIO_WALL, np.float32), axis=-1)
    floor = np.linalg.norm(f - np.array(STUDIO_FLOOR, np.float32), axis=-1)
    return float((np.minimum(wall, floor) < NEAR).mean())
