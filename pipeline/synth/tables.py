"""Tables rendered as images in varied styles (fonts, rules, stripes, header colours, alignment) with PIL;
the caption is the markdown table."""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .common import BOLD, CITIES, FONTS, MONTHS, NAMES, PRODUCTS, TEAMS, font_path, png_bytes, sample_rng
from .markdown import markdown_table
from .shards import Sample

STYLES = ("grid", "rules", "stripes", "plain")
HEADER_FILLS = ((255, 255, 255), (230, 236, 245), (52, 73, 94), (40, 110, 70), (240, 240, 240), (120, 30, 40))
STRIPE_FILLS = ((244, 246, 250), (240, 248, 240), (250, 245, 235))


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(name), size)


def _column(rng: random.Random, used: set[str]) -> tuple[str, list[str] | None, str]:
    """(header, pool of words or None for numbers, number format)."""
    options = [
        ("Name", NAMES, ""),
        ("City", CITIES, ""),
        ("Item", PRODUCTS, ""),
        ("Team", TEAMS, ""),
        ("Month", MONTHS, ""),
        ("Count", None, "int"),
        ("Price", None, "money"),
        ("Score", None, "dec"),
        ("Share", None, "pct"),
        ("Year", None, "year"),
        ("Total", None, "int"),
        ("Rate", None, "dec"),
    ]
    options = [o for o in options if o[0] not in used]
    return rng.choice(options)


def _number(rng: random.Random, fmt: str) -> str:
    if fmt == "int":
        return str(rng.randint(1, 9999))
    if fmt == "money":
        return f"{rng.uniform(1, 999):.2f}"
    if fmt == "dec":
        return f"{rng.uniform(0, 100):.1f}"
    if fmt == "pct":
        return f"{rng.randint(1, 99)}%"
    return str(rng.randint(1990, 2030))


def make_table(rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """A random header and body: a word column first, then 1-4 others."""
    used: set[str] = set()
    first = _column(rng, {"Count", "Price", "Score", "Share", "Year", "Total", "Rate"})
    cols = [first]
    used.add(first[0])
    for _ in range(rng.randint(1, 4)):
        col = _column(rng, used)
        used.add(col[0])
        cols.append(col)
    n_rows = rng.randint(3, 8)
    body_cols = []
    for _, pool, fmt in cols:
        if pool is not None:
            body_cols.append(rng.sample(list(pool), n_rows))
        else:
            body_cols.append([_number(rng, fmt) for _ in range(n_rows)])
    return [c[0] for c in cols], [list(r) for r in zip(*body_cols, strict=True)]


def render_table(rng: random.Random, header: list[str], rows: list[list[str]]) -> tuple[Image.Image, str]:
    """The table drawn in a random style; returns the image and the style name."""
    style = rng.choice(STYLES)
    face = rng.choice(FONTS)
    size = rng.randint(15, 20)
    font, bold = _font(face, size), _font(BOLD[face], size)
    pad_x, pad_y = rng.randint(10, 18), rng.randint(6, 10)
    widths = [
        max(bold.getlength(h), *(font.getlength(r[j]) for r in rows)) + 2 * pad_x
        for j, h in enumerate(header)
    ]
    row_h = size + 2 * pad_y + 4
    margin = rng.randint(16, 40)
    width = max(int(sum(widths)) + 2 * margin, 160)
    height = row_h * (len(rows) + 1) + 2 * margin
    # the image checks reject an aspect ratio above 3: widen short tables' margins instead
    width, height = max(width, height // 3 + 1), max(height, width // 3 + 1)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x0 = (width - int(sum(widths))) // 2
    y0 = (height - row_h * (len(rows) + 1)) // 2
    header_fill = rng.choice(HEADER_FILLS) if style != "plain" else (255, 255, 255)
    dark_header = sum(header_fill) < 400
    stripe = rng.choice(STRIPE_FILLS)
    right_numbers = rng.random() < 0.5
    total_w = int(sum(widths))
    line = (60, 60, 60)
    draw.rectangle([x0, y0, x0 + total_w, y0 + row_h], fill=header_fill)
    for i, row in enumerate([header, *rows]):
        y = y0 + i * row_h
        if i and style == "stripes" and i % 2 == 0:
            draw.rectangle([x0, y, x0 + total_w, y + row_h], fill=stripe)
        x = x0
        for j, cell in enumerate(row):
            f = bold if i == 0 else font
            w = f.getlength(cell)
            numeric = cell.replace(".", "").replace("%", "").isdigit()
            tx = x + widths[j] - pad_x - w if (right_numbers and numeric) else x + pad_x
            colour = (255, 255, 255) if i == 0 and dark_header else (20, 20, 20)
            draw.text((tx, y + pad_y + 2), cell, font=f, fill=colour)
            x += widths[j]
        if style in ("grid", "rules") or i == 0:
            draw.line([x0, y + row_h, x0 + total_w, y + row_h], fill=line, width=2 if i == 0 else 1)
    bottom = y0 + row_h * (len(rows) + 1)
    if style == "grid":
        x = x0
        for w in [0, *widths]:
            x += w
            draw.line([x, y0, x, bottom], fill=line, width=1)
        draw.rectangle([x0, y0, x0 + total_w, bottom], outline=line, width=1)
    elif style == "rules":
        draw.line([x0, y0, x0 + total_w, y0], fill=line, width=2)
    return image, style


def generate(seed: int, index: int) -> Sample:
    """Table `index` of the stream `seed`."""
    rng = sample_rng("tables", seed, index)
    header, rows = make_table(rng)
    image, style = render_table(rng, header, rows)
    return Sample(
        png_bytes(image), markdown_table(header, rows), {"header": header, "rows": rows, "style": style}
    )
