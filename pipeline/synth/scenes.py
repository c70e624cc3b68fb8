"""Scenes of a few shapes with known colours and exact boxes, drawn with PIL: the content that grounding
captions (boxes) and question-answer captions (counts, colours, positions) describe."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

# Colours far apart in RGB, so each has one plain English name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "green": (30, 150, 60),
    "blue": (30, 80, 220),
    "yellow": (245, 210, 30),
    "orange": (250, 130, 20),
    "purple": (130, 40, 170),
    "black": (20, 20, 20),
    "pink": (245, 130, 190),
    "brown": (130, 75, 30),
    "grey": (130, 130, 130),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
BACKGROUNDS = ((250, 250, 250), (240, 240, 230), (225, 235, 245), (235, 245, 235), (250, 240, 235))


@dataclass(frozen=True)
class Obj:
    """One drawn shape: its name and its box in pixels (x0, y0, x1, y1), exclusive right and bottom."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]

    def normalised(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box as fractions of the image's width and height, 3 decimals."""
        x0, y0, x1, y1 = self.box
        return (round(x0 / width, 3), round(y0 / height, 3), round(x1 / width, 3), round(y1 / height, 3))

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def with_article(self) -> str:
        return ("an " if self.colour[0] in "aeiou" else "a ") + self.name


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[Obj, ...]

    def as_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "objects": [
                {**asdict(o), "box_norm": o.normalised(self.width, self.height)} for o in self.objects
            ],
        }


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_scene(rng: random.Random, n_min: int = 2, n_max: int = 5, unique: bool = True) -> Scene:
    """2-5 non-overlapping shapes; with `unique` no two share both colour and shape (each can be named)."""
    width, height = rng.choice(((448, 448), (512, 384), (384, 512), (512, 512)))
    objects: list[Obj] = []
    target = rng.randint(n_min, n_max)
    tries = 0
    while len(objects) < target and tries < 200:
        tries += 1
        side = rng.randint(min(width, height) // 8, min(width, height) // 4)
        w = side if rng.random() < 0.7 else int(side * rng.uniform(0.7, 1.4))
        w = min(w, width - 8)
        x0, y0 = rng.randint(4, width - w - 4), rng.randint(4, height - side - 4)
        box = (x0, y0, x0 + w, y0 + side)
        if any(_overlaps(box, o.box, 6) for o in objects):
            continue
        obj = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), box)
        if unique and any((o.shape, o.colour) == (obj.shape, obj.colour) for o in objects):
            continue
        objects.append(obj)
    return Scene(width, height, tuple(objects))


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "hexagon":
        return [
            (x0 + rx / 2, y0),
            (x1 - rx / 2, y0),
            (x1, cy),
            (x1 - rx / 2, y1),
            (x0 + rx / 2, y1),
            (x0, cy),
        ]
    # star: 5 points, its outer points touching the box's top and sides
    pts = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        r = 1.0 if k % 2 == 0 else 0.45
        pts.append((cx + rx * r * math.cos(a) / 0.951, cy + ry * r * (math.sin(a) + 0.19) / 1.0))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy = (x1 - x0) / (max(xs) - min(xs)), (y1 - y0) / (max(ys) - min(ys))
    return [(x0 + (x - min(xs)) * sx, y0 + (y - min(ys)) * sy) for x, y in pts]


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene on a plain background; every shape fills its box edge to edge."""
    bg = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (scene.width, scene.height), bg)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        fill = COLOURS[o.colour]
        x0, y0, x1, y1 = o.box
        if o.shape == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        else:
            draw.polygon(_polygon(o.shape, o.box), fill=fill)
    return image


def position(obj: Obj, width: int, height: int) -> str:
    """Where the box's centre lies in a 3 x 3 grid: `top left`, `centre`, `bottom` ..."""
    cx, cy = (obj.box[0] + obj.box[2]) / 2 / width, (obj.box[1] + obj.box[3]) / 2 / height
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return " ".join(p for p in (row, col) if p) or "centre"
