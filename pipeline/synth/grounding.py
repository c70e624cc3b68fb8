"""Grounding: a caption naming each object of a scene with its box as normalised
`<box>x0,y0,x1,y1</box>` coordinates (3 decimals)."""

from __future__ import annotations

from .common import png_bytes, sample_rng
from .scenes import render, sample_scene
from .shards import Sample

OPENERS = ("The image shows", "In this picture there is", "This scene contains", "We can see")


def box_text(box: tuple[float, float, float, float]) -> str:
    """`<box>0.125,0.250,0.500,0.875</box>`."""
    return "<box>" + ",".join(f"{v:.3f}" for v in box) + "</box>"


def generate(seed: int, index: int) -> Sample:
    """Grounding scene `index` of the stream `seed`."""
    rng = sample_rng("grounding", seed, index)
    scene = sample_scene(rng)
    image = render(scene, rng)
    phrases = [f"{o.with_article}{box_text(o.normalised(scene.width, scene.height))}" for o in scene.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    caption = f"{rng.choice(OPENERS)} {listed}."
    return Sample(png_bytes(image), caption, scene.as_dict())
