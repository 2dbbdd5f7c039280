"""The world's attributes and the words for them in English and Chinese."""

from __future__ import annotations

COLORS = {  # name -> RGB (0-255), chosen far from every setting's palette
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 30),
    "green": (35, 195, 70),
    "blue": (35, 80, 225),
    "purple": (145, 50, 195),
    "white": (245, 245, 245),
}
OBJECTS = ("ball", "box")
MOTIONS = ("bounces", "rolls left", "rolls right", "falls", "is thrown", "stays still")
SETTINGS = ("grass", "sand", "night", "room")
CAMERAS = ("static", "pans left", "pans right")

# English: each attribute in a few wordings; captions pick one (all of them are trained on).
EN = {
    "color": {c: [c] for c in COLORS},
    "object": {"ball": ["ball"], "box": ["box", "cube"]},
    "motion": {
        "bounces": ["bounces", "is bouncing"],
        "rolls left": ["rolls left", "rolls to the left"],
        "rolls right": ["rolls right", "rolls to the right"],
        "falls": ["falls", "drops"],
        "is thrown": ["is thrown", "flies through the air"],
        "stays still": ["stays still", "rests"],
    },
    "setting": {
        "grass": ["on the grass under a blue sky", "on the grass"],
        "sand": ["on the sand", "on a sandy beach"],
        "night": ["on the ground at night", "at night"],
        "room": ["in a grey room", "on the floor of a grey room"],
    },
    "camera": {
        "static": [""],
        "pans left": ["the camera pans left", "as the camera pans to the left"],
        "pans right": ["the camera pans right", "as the camera pans to the right"],
    },
}

ZH = {
    "color": {
        "red": ["红色"],
        "orange": ["橙色"],
        "yellow": ["黄色"],
        "green": ["绿色"],
        "blue": ["蓝色"],
        "purple": ["紫色"],
        "white": ["白色"],
    },
    "object": {"ball": ["球"], "box": ["箱子", "盒子"]},
    "motion": {
        "bounces": ["弹跳", "弹起来"],
        "rolls left": ["向左滚动", "往左滚"],
        "rolls right": ["向右滚动", "往右滚"],
        "falls": ["落下", "掉下来"],
        "is thrown": ["被抛出", "被扔出去"],
        "stays still": ["静止不动", "一动不动"],
    },
    "setting": {
        "grass": ["蓝天下的草地上", "草地上"],
        "sand": ["沙滩上", "沙地上"],
        "night": ["夜晚的地面上", "夜里的地上"],
        "room": ["灰色的房间里", "灰色房间的地板上"],
    },
    "camera": {
        "static": [""],
        "pans left": ["镜头向左平移", "镜头往左移"],
        "pans right": ["镜头向右平移", "镜头往右移"],
    },
}
