"""A clip's parameters and its motion, simulated at a fine time step and sampled at the video's fps.

Units: lengths in frame heights, time in seconds. `x` is the object's centre in the world
(0 .. aspect is the first frame's view), `y` the height of its lowest point above the ground.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from world.vocabulary import CAMERAS, COLORS, MOTIONS, OBJECTS, SETTINGS

GRAVITY = 4.0  # frame heights / s^2: a drop of 0.45 lands in ~0.47 s, so a 1 s clip shows a bounce
GROUND = 0.72  # the horizon and the ground line, as a fraction of the frame height from the top
SUBSTEPS = 8  # simulation steps per frame


@dataclass(frozen=True)
class Scene:
    color: str
    object: str
    motion: str
    setting: str
    camera: str
    size: float  # ball radius or half the box side
    x0: float
    y0: float
    vx: float
    vy: float
    restitution: float  # vertical speed kept at a bounce
    friction: float  # deceleration on the ground, frame heights / s^2
    pan: float  # camera speed, frame heights / s (negative: pans left)
    texture_seed: int

    @property
    def attrs(self) -> dict[str, str]:
        return {
            "color": self.color,
            "object": self.object,
            "motion": self.motion,
            "setting": self.setting,
            "camera": self.camera,
        }

    def as_dict(self) -> dict:
        return asdict(self)

    def simulate(self, num_frames: int, fps: float) -> np.ndarray:
        """(num_frames, 2): x and height above the ground of the object at each frame."""
        dt = 1.0 / (fps * SUBSTEPS)
        x, y, vx, vy = self.x0, self.y0, self.vx, self.vy
        out = np.zeros((num_frames, 2))
        for i in range(num_frames):
            out[i] = (x, y)
            for _ in range(SUBSTEPS):
                if y > 0 or vy > 0:
                    vy -= GRAVITY * dt
                    y += vy * dt
                    if y <= 0:
                        y = 0.0
                        vy = -vy * self.restitution
                        if vy < 0.15:  # too slow to leave the ground again
                            vy = 0.0
                else:
                    # On the ground: friction slows it to a stop, never backwards.
                    speed = max(abs(vx) - self.friction * dt, 0.0)
                    vx = np.sign(vx) * speed
                x += vx * dt
        return out

    def camera_x(self, num_frames: int, fps: float) -> np.ndarray:
        """The left edge of the view in world units at each frame."""
        return self.pan * np.arange(num_frames) / fps


def sample_scene(attrs: dict[str, str], rng: np.random.Generator) -> Scene:
    """Random parameters for a clip with the given attributes (a 2 s clip stays in view)."""
    u = rng.uniform
    size = u(0.09, 0.12)
    x0, y0, vx, vy, restitution, friction = u(0.3, 0.7), 0.0, 0.0, 0.0, 0.0, 0.0
    motion = attrs["motion"]
    if motion == "bounces":
        y0, vy, restitution = u(0.28, 0.45), u(-0.3, 0.3), u(0.7, 0.82)
    elif motion == "falls":
        y0, restitution = u(0.3, 0.45), u(0.0, 0.12)
    elif motion in ("rolls left", "rolls right"):
        side = 1.0 if motion == "rolls right" else -1.0
        x0, vx, friction = 0.5 - side * u(0.15, 0.35), side * u(0.4, 0.65), u(0.5, 0.8)
    elif motion == "is thrown":
        side = rng.choice([-1.0, 1.0])
        x0, y0 = 0.5 - side * u(0.2, 0.35), u(0.05, 0.12)
        vx, vy, restitution, friction = side * u(0.3, 0.45), u(1.3, 1.6), 0.3, 1.0
    elif motion != "stays still":
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
    speed = u(0.12, 0.2)
    pan = {"static": 0.0, "pans left": -speed, "pans right": speed}[attrs["camera"]]
    return Scene(
        **attrs,
        size=size,
        x0=x0,
        y0=y0,
        vx=vx,
        vy=vy,
        restitution=restitution,
        friction=friction,
        pan=pan,
        texture_seed=int(rng.integers(2**31)),
    )


def all_combinations() -> list[dict[str, str]]:
    keys = ("color", "object", "motion", "setting", "camera")
    return [dict(zip(keys, c, strict=True)) for c in itertools.product(COLORS, OBJECTS, MOTIONS, SETTINGS, CAMERAS)]


def held_out_combinations() -> list[dict[str, str]]:
    """(colour, object, motion, setting) combinations never trained on: one in ten, every value still seen.

    Chosen by a fixed rule, so the training set and the quality benchmark agree without a file.
    """
    held = []
    for i, (color, obj, motion, setting) in enumerate(itertools.product(COLORS, OBJECTS, MOTIONS, SETTINGS)):
        if (i * 7 + 3) % 10 == 0:
            held.append({"color": color, "object": obj, "motion": motion, "setting": setting})
    return held


def is_held_out(attrs: dict[str, str]) -> bool:
    key = {k: attrs[k] for k in ("color", "object", "motion", "setting")}
    return key in held_out_combinations()
