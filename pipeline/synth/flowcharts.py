"""Flowcharts drawn with PIL: a top-down chain from Start to End of steps (boxes) and questions (diamonds),
each question's "no" leading to a side step that goes on to End. The caption is the chart in Mermaid's
flowchart syntax (``A([Start]) --> B[Load file]``, ``C{File valid?} -->|no| D[...]``)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .common import FONTS, font_path, png_bytes, sample_rng
from .shards import Sample

VERBS = (
    "Check Send Load Save Update Read Print Create Review Approve Validate Open Close Sort Merge Archive "
    "Export Import Notify Scan Sign Pack Ship Bill Log Retry Delete Format"
).split()
OBJECTS = (
    "order invoice file record data report user request payment form list image ticket batch account "
    "message parcel draft backup queue"
).split()
QUESTIONS = ("{} valid?", "{} complete?", "{} approved?", "Is {} ready?", "More {}s?", "{} found?")
LINE = (40, 40, 40)
FILLS = ((255, 255, 255), (232, 240, 252), (240, 248, 236), (253, 246, 227), (245, 238, 248))
TINTS = ((214, 226, 246), (218, 238, 214), (250, 232, 200), (234, 220, 242), (225, 225, 225))


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    shape: str  # "terminal", "step" or "question"


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str = ""


@lru_cache(maxsize=32)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(name), size)


def _step(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}"


def _question(rng: random.Random) -> str:
    text = rng.choice(QUESTIONS).format(rng.choice(OBJECTS))
    return text[:1].upper() + text[1:]


def make_flowchart(rng: random.Random) -> tuple[list[Node], list[Edge], list[str]]:
    """Nodes, edges, and the main chain's ids top to bottom (side steps sit right of their question)."""
    ids = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    prev = Node(next(ids), "Start", "terminal")
    nodes, edges, chain, side = [prev], [], [prev.id], []
    for _ in range(rng.randint(2, 5)):
        question = rng.random() < 0.4
        node = Node(next(ids), _question(rng) if question else _step(rng), "question" if question else "step")
        edges.append(Edge(prev.id, node.id, "yes" if prev.shape == "question" else ""))
        nodes.append(node)
        chain.append(node.id)
        if question:
            other = Node(next(ids), _step(rng), "step")
            nodes.append(other)
            side.append(other.id)
            edges.append(Edge(node.id, other.id, "no"))
        prev = node
    end = Node(next(ids), rng.choice(("End", "Stop", "Done")), "terminal")
    edges.append(Edge(prev.id, end.id, "yes" if prev.shape == "question" else ""))
    nodes.append(end)
    chain.append(end.id)
    edges += [Edge(step, end.id) for step in side]
    return nodes, edges, chain


def mermaid(nodes: list[Node], edges: list[Edge]) -> str:
    """The chart as Mermaid flowchart text: each node written with its shape where it first appears."""
    shapes = {"terminal": "([{}])", "step": "[{}]", "question": "{{{}}}"}
    by_id = {n.id: n for n in nodes}
    written: set[str] = set()

    def ref(node_id: str) -> str:
        if node_id in written:
            return node_id
        written.add(node_id)
        node = by_id[node_id]
        return node_id + shapes[node.shape].format(node.label)

    lines = ["flowchart TD"]
    for e in edges:
        arrow = f"-->|{e.label}|" if e.label else "-->"
        lines.append(f"{ref(e.src)} {arrow} {ref(e.dst)}")  # unindented: curation keeps lines, not indents
    return "\n".join(lines)


def _arrow(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], width: int) -> None:
    """A polyline whose last segment (axis-aligned) ends in an arrowhead."""
    draw.line(points, fill=LINE, width=width, joint="curve")
    (x0, y0), (x1, y1) = points[-2], points[-1]
    dx, dy = (x1 > x0) - (x1 < x0), (y1 > y0) - (y1 < y0)
    size = 5 + 2 * width
    back = (x1 - dx * size, y1 - dy * size)
    wing = (dy * size * 0.55, dx * size * 0.55)
    draw.polygon([(x1, y1), (back[0] + wing[0], back[1] + wing[1]), (back[0] - wing[0], back[1] - wing[1])],
                 fill=LINE)  # fmt: skip


def render_flowchart(
    rng: random.Random, nodes: list[Node], edges: list[Edge], chain: list[str]
) -> tuple[Image.Image, dict]:
    """The chart drawn top-down; returns the image and each node's box (x0, y0, x1, y1) in pixels."""
    face = rng.choice(FONTS)
    size = rng.randint(15, 19)
    font = _font(face, size)
    fill, tint = rng.choice(FILLS), rng.choice(TINTS)
    width = rng.choice((1, 2))
    by_id = {n.id: n for n in nodes}
    sides = {e.src: e.dst for e in edges if e.label == "no"}

    def extent(node: Node) -> tuple[float, float]:
        w, h = font.getlength(node.label) + (56 if node.shape == "terminal" else 32), size + 22
        return (w * 1.5 + 16, h * 1.7) if node.shape == "question" else (w, h)

    col_w = max(extent(by_id[i])[0] for i in chain)
    side_w = max([extent(by_id[s])[0] for s in sides.values()], default=0)
    gap_y, gap_x, margin = rng.randint(26, 40), rng.randint(40, 64), rng.randint(16, 32)
    lane = 18 if sides else 0  # the side steps' path down to the end, right of them
    heights = [extent(by_id[i])[1] for i in chain]
    total_h = int(sum(heights) + gap_y * (len(chain) - 1) + 2 * margin)
    total_w = int(col_w + (gap_x + side_w + lane if sides else 0) + 2 * margin)
    total_w, total_h = max(total_w, total_h // 3 + 1, 160), max(total_h, total_w // 3 + 1)
    image = Image.new("RGB", (total_w, total_h), "white")
    draw = ImageDraw.Draw(image)
    cx = margin + col_w / 2
    boxes: dict[str, tuple[float, float, float, float]] = {}
    y = margin
    for node_id, h in zip(chain, heights, strict=True):
        w = extent(by_id[node_id])[0]
        boxes[node_id] = (cx - w / 2, y, cx + w / 2, y + h)
        if node_id in sides:
            sw, sh = extent(by_id[sides[node_id]])
            sx = margin + col_w + gap_x
            boxes[sides[node_id]] = (sx, y + h / 2 - sh / 2, sx + sw, y + h / 2 + sh / 2)
        y += h + gap_y
    for node_id, (x0, y0, x1, y1) in boxes.items():
        node = by_id[node_id]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        # Curved and slanted outlines around text make tesseract take the node for a picture and skip its
        # text, so terminals and questions are filled shapes without one (steps keep their box).
        if node.shape == "question":
            draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=tint)
        elif node.shape == "terminal":
            draw.rounded_rectangle((x0, y0, x1, y1), radius=(y1 - y0) / 2, fill=tint)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline=LINE, width=width)
        draw.text((mx, my), node.label, font=font, fill=(20, 20, 20), anchor="mm")
    end = boxes[chain[-1]]
    right = margin + col_w + gap_x + side_w + lane / 2
    small = _font(face, size - 3)
    for e in edges:
        a, b = boxes[e.src], boxes[e.dst]
        if e.dst == chain[-1] and e.src not in chain:  # side step -> end, down the lane
            ay, my = (a[1] + a[3]) / 2, (end[1] + end[3]) / 2
            _arrow(draw, [(a[2], ay), (right, ay), (right, my), (end[2], my)], width)
        elif e.label == "no":
            my = (a[1] + a[3]) / 2
            _arrow(draw, [(a[2], my), (b[0], my)], width)
            draw.text((a[2] + 4, my - 4), "no", font=small, fill=(90, 90, 90), anchor="lb")
        else:
            _arrow(draw, [(cx, a[3]), (cx, b[1])], width)
            if e.label:
                draw.text((cx + 6, a[3] + 2), "yes", font=small, fill=(90, 90, 90), anchor="lt")
    return image, boxes


def generate(seed: int, index: int) -> Sample:
    """Flowchart `index` of the stream `seed`."""
    rng = sample_rng("flowcharts", seed, index)
    nodes, edges, chain = make_flowchart(rng)
    image, _ = render_flowchart(rng, nodes, edges, chain)
    structure = {"nodes": [asdict(n) for n in nodes], "edges": [asdict(e) for e in edges]}
    return Sample(png_bytes(image), mermaid(nodes, edges), structure)
