"""Scene specifications (what is drawn, in words a caption can use) and their rendering with PIL."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

from .vocab import (
    CELLS,
    COLOURS,
    GROUP_SIZES,
    MULTI_OBJECT_SIZES,
    SHAPES,
    SINGLE_OBJECT_SIZES,
    SIZES,
    TEXT_CELLS,
    TEXTURE_WEIGHTS,
    WORDS_IN_IMAGES,
)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSans-Oblique.ttf",
)
MIN_FONT_PX = 14
MIN_COLOUR_DISTANCE = 120.0  # RGB distance between a shape's colour and the background's
SHADING = (0.1, 0.2)  # strength of the soft background shading, as a fraction towards black / white
MIN_TEXT_LUMA_GAP = 90.0  # luma difference between text and background, so OCR can read it
Points = list[tuple[float, float]]
NO_TEXTURE_SHAPES = frozenset({"ring", "crescent", "cross"})  # too thin for stripes, dots or outlines


@dataclass(frozen=True)
class Obj:
    """A group of `count` identical shapes in one grid cell."""

    shape: str
    colour: str
    size: str
    count: int
    texture: str
    cell: str


@dataclass(frozen=True)
class TextItem:
    """A word or short phrase rendered into the image."""

    text: str
    colour: str
    cell: str
    font: str


@dataclass(frozen=True)
class Scene:
    """Everything a caption may mention; rendering adds only unnamed jitter."""

    width: int
    height: int
    background: str
    gradient: bool
    objects: tuple[Obj, ...]
    text: TextItem | None = None


def colour_distance(a: str, b: str) -> float:
    """Euclidean RGB distance between two named colours."""
    (r1, g1, b1), (r2, g2, b2) = COLOURS[a][0], COLOURS[b][0]
    return math.sqrt((r1 - r2) ** 2 + (g1 - g2) ** 2 + (b1 - b2) ** 2)


def luma(colour: str) -> float:
    """ITU-R 601 luma of a named colour."""
    r, g, b = COLOURS[colour][0]
    return 0.299 * r + 0.587 * g + 0.114 * b


def sample_scene(
    rng: random.Random,
    width: int,
    height: int,
    n_objects: int,
    palette: tuple[str, ...] = tuple(COLOURS),
    shapes: tuple[str, ...] = tuple(SHAPES),
    with_text: bool = False,
    plain: bool = False,
) -> Scene:
    """Draws a random scene of 1-3 groups in distinct grid cells (plus a word in a free row if `with_text`
    and it fits); `plain` keeps shapes single and solid and the background without gradient (the scenes
    the translated captions can describe)."""
    background = rng.choice(palette)
    text = _sample_text(rng, width, height, background) if with_text else None
    free = [c for c in CELLS if text is None or CELLS[c][1] != CELLS[text.cell][1]]
    cells = rng.sample(free, min(n_objects, len(free)))
    sizes = SINGLE_OBJECT_SIZES if len(cells) == 1 and text is None else MULTI_OBJECT_SIZES
    objects: list[Obj] = []
    for cell in cells:  # no two groups of the same colour and shape, so each can be named apart
        obj = _sample_obj(rng, cell, background, palette, shapes, sizes, plain)
        while any((o.shape, o.colour) == (obj.shape, obj.colour) for o in objects):
            obj = _sample_obj(rng, cell, background, palette, shapes, sizes, plain)
        objects.append(obj)
    gradient = not plain and rng.random() < 0.2
    return Scene(width, height, background, gradient, tuple(objects), text)


def _sample_obj(
    rng: random.Random,
    cell: str,
    background: str,
    palette: tuple[str, ...],
    shapes: tuple[str, ...],
    sizes: tuple[str, ...],
    plain: bool,
) -> Obj:
    colours = _contrasting(background, palette)
    shape = rng.choice(shapes)
    count = 1 if plain or rng.random() < 0.8 else rng.choice((2, 2, 3))
    size = rng.choice(GROUP_SIZES if count > 1 else sizes)
    texture = "solid"
    if not plain and shape not in NO_TEXTURE_SHAPES:
        texture = rng.choices(list(TEXTURE_WEIGHTS), weights=list(TEXTURE_WEIGHTS.values()))[0]
    return Obj(shape, rng.choice(colours), size, count, texture, cell)


@lru_cache(maxsize=256)
def _contrasting(background: str, palette: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in palette if colour_distance(c, background) >= MIN_COLOUR_DISTANCE)


def _sample_text(rng: random.Random, width: int, height: int, background: str) -> TextItem | None:
    colours = [c for c in COLOURS if abs(luma(c) - luma(background)) >= MIN_TEXT_LUMA_GAP]
    text = rng.choice(WORDS_IN_IMAGES)
    font = rng.choice(FONT_FILES)
    if _fit_font_size(text, font, width, height) is None:
        return None
    return TextItem(text, rng.choice(colours), rng.choice(TEXT_CELLS), font)


@lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)  # type: ignore[return-value]


@lru_cache(maxsize=1024)
def _extent_at_100px(text: str, font: str) -> tuple[int, int]:
    left, top, right, bottom = load_font(font, 100).getbbox(text)
    return right - left, bottom - top


def _fit_font_size(text: str, font: str, width: int, height: int) -> int | None:
    """Largest font size (at most 48 px) whose rendering fits 90% of the width and 28% of the height."""
    w100, h100 = _extent_at_100px(text, font)
    size = int(min(48.0, 0.9 * width * 100 / w100, 0.28 * height * 100 / h100))
    return size if size >= MIN_FONT_PX else None


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Renders a scene as RGB; `rng` only jitters shades, offsets, rotations and text size."""
    image = _background(scene, rng)
    for obj in scene.objects:
        _draw_obj(image, obj, rng)
    if scene.text is not None:
        _draw_text(image, scene.text, rng)
    return image


def _jitter(colour: str, rng: random.Random, amount: int = 10) -> tuple[int, int, int]:
    r, g, b = COLOURS[colour][0]
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in (r, g, b))  # type: ignore[return-value]


def _background(scene: Scene, rng: random.Random) -> Image.Image:
    """The background colour with soft random shading (so no two backgrounds look, or pHash, alike)."""
    base = _jitter(scene.background, rng)
    amount = rng.uniform(*SHADING)
    grid = rng.randint(6, 9)
    field = Image.frombytes("L", (grid, grid), rng.randbytes(grid * grid))
    field = field.resize((scene.width, scene.height), Image.Resampling.BICUBIC)
    channels = []
    for v in base:  # map the field 0..255 onto dark..light of each channel
        lo, hi = int(v * (1 - amount)), int(v + (255 - v) * amount)
        channels.append(field.point([lo + (hi - lo) * i // 255 for i in range(256)]))
    image = Image.merge("RGB", channels)
    if scene.gradient:
        factor = rng.uniform(0.45, 0.7)
        other = Image.new("RGB", image.size, tuple(int(v * factor) for v in base))
        mask = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize(image.size)
        image = Image.composite(other, image, mask)
    return image


def _cell_centre(cell: str, width: int, height: int, rng: random.Random) -> tuple[float, float]:
    col, row, _ = CELLS[cell]
    x = (col + 0.5 + rng.uniform(-0.12, 0.12)) * width / 3
    y = (row + 0.5 + rng.uniform(-0.12, 0.12)) * height / 3
    return x, y


def _draw_obj(image: Image.Image, obj: Obj, rng: random.Random) -> None:
    """Pastes `count` copies of the shape in a row (a column in tall images) around the cell centre."""
    width, height = image.size
    lo, hi = SIZES[obj.size][0]
    side = max(4, int(min(width, height) * rng.uniform(lo, hi)))
    cx, cy = _cell_centre(obj.cell, width, height, rng)
    colour = _jitter(obj.colour, rng)
    mask = _apply_texture(_shape_mask(obj.shape, side, rng), obj.texture, rng)
    horizontal = width >= height
    along = mask.width if horizontal else mask.height
    span = along * (1.25 * (obj.count - 1) + 1)
    if horizontal:
        cx = min(max(cx, span / 2), width - span / 2)
    else:
        cy = min(max(cy, span / 2), height - span / 2)
    for i in range(obj.count):
        offset = (i - (obj.count - 1) / 2) * along * 1.25
        x, y = (cx + offset, cy) if horizontal else (cx, cy + offset)
        x0 = int(min(max(x - mask.width / 2, 0), width - mask.width))
        y0 = int(min(max(y - mask.height / 2, 0), height - mask.height))
        image.paste(colour, (x0, y0, x0 + mask.width, y0 + mask.height), mask)


def _regular(n: int, r: float, c: float, rotation: float, inner: float | None = None) -> Points:
    """Vertices of a regular n-gon (or an n-pointed star when `inner` is set) around (c, c)."""
    points = []
    steps = 2 * n if inner is not None else n
    for k in range(steps):
        radius = r * inner if inner is not None and k % 2 else r
        angle = rotation + 2 * math.pi * k / steps - math.pi / 2
        points.append((c + radius * math.cos(angle), c + radius * math.sin(angle)))
    return points


def _heart(r: float, c: float) -> Points:
    points = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((c + r * x / 17, c - r * (y + 2) / 17))
    return points


def _cross(r: float, c: float) -> Points:
    a, b = r, r / 3
    pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
           (-b, -b)]
    return [(c + x, c + y) for x, y in pts]


def _shape_mask(shape: str, side: int, rng: random.Random) -> Image.Image:
    """An L mask of one shape; squares fill a side x side box, elongated shapes a stretched one."""
    if shape in ("rectangle", "ellipse"):
        ratio = rng.uniform(1.6, 2.2)
        w, h = (side, max(3, int(side / ratio))) if rng.random() < 0.6 else (max(3, int(side / ratio)), side)
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        (draw.rectangle if shape == "rectangle" else draw.ellipse)((0, 0, w - 1, h - 1), fill=255)
        return mask
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    r, c = side / 2 - 0.5, side / 2 - 0.5
    tilt = math.radians(rng.uniform(-12, 12))
    if shape == "circle":
        draw.ellipse((0, 0, side - 1, side - 1), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, side - 1, side - 1), fill=255)
    elif shape == "ring":
        draw.ellipse((0, 0, side - 1, side - 1), outline=255, width=max(2, side // 6))
    elif shape == "crescent":
        draw.ellipse((0, 0, side - 1, side - 1), fill=255)
        shift = side * rng.uniform(0.28, 0.4) * rng.choice((-1, 1))
        draw.ellipse((shift, -side * 0.08, side - 1 + shift, side * 0.92), fill=0)
    elif shape == "diamond":
        draw.polygon([(c, 0), (side - 1, c), (c, side - 1), (0, c)], fill=255)
    elif shape == "heart":
        draw.polygon(_heart(r, c), fill=255)
    elif shape == "cross":
        draw.polygon(_cross(r, c), fill=255)
    elif shape == "star":
        draw.polygon(_regular(5, r, c, tilt, inner=0.45), fill=255)
    else:
        sides = {"triangle": 3, "pentagon": 5, "hexagon": 6, "octagon": 8}[shape]
        draw.polygon(_regular(sides, r, c, tilt), fill=255)
    return mask


def _apply_texture(mask: Image.Image, texture: str, rng: random.Random) -> Image.Image:
    if texture == "solid":
        return mask
    if texture == "outlined":  # the mask minus its erosion; pad first so shapes filling the box keep edges
        k = max(3, min(mask.size) // 10 | 1)
        eroded = ImageOps.expand(mask, k, 0).filter(ImageFilter.MinFilter(k))
        return ImageChops.subtract(mask, eroded.crop((k, k, k + mask.width, k + mask.height)))
    pattern = Image.new("L", mask.size, 0)
    draw = ImageDraw.Draw(pattern)
    w, h = mask.size
    period = max(4, min(w, h) // rng.choice((4, 5, 6)))
    if texture == "striped":
        vertical = rng.random() < 0.5
        for p in range(0, w if vertical else h, period):
            box = (p, 0, p + period // 2 - 1, h) if vertical else (0, p, w, p + period // 2 - 1)
            draw.rectangle(box, fill=255)
    else:  # dotted: dots on a light base so the shape's outline stays visible
        pattern.paste(70, (0, 0, w, h))
        dot = max(1, period // 3)
        for y in range(period // 2, h, period):
            for x in range(period // 2, w, period):
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=255)
    return ImageChops.multiply(mask, pattern)


def _draw_text(image: Image.Image, item: TextItem, rng: random.Random) -> None:
    width, height = image.size
    size = _fit_font_size(item.text, item.font, width, height)
    if size is None:
        return
    size = max(MIN_FONT_PX, size - rng.randint(0, 6))
    font = load_font(item.font, size)
    left, top, right, bottom = font.getbbox(item.text)
    cx, cy = _cell_centre(item.cell, width, height, rng)
    cx = width / 2 + (cx - width / 2) * 0.3  # text spans the row, keep it near the middle column
    x = min(max(cx - (right - left) / 2, 0), width - (right - left)) - left
    y = min(max(cy - (bottom - top) / 2, 0), height - (bottom - top)) - top
    ImageDraw.Draw(image).text((x, y), item.text, fill=_jitter(item.colour, rng, 6), font=font)
