"""Question-answer captions about a scene's known content: counts, colours, positions, presence."""

from __future__ import annotations

import random

from .common import png_bytes, sample_rng
from .scenes import COLOURS, SHAPES, Scene, position, render, sample_scene
from .shards import Sample


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Every question this scene answers for sure, shuffled."""
    objs, w, h = scene.objects, scene.width, scene.height
    qa: list[tuple[str, str]] = [("How many shapes are there?", str(len(objs)))]
    for shape in SHAPES:
        n = sum(o.shape == shape for o in objs)
        qa.append((f"How many {shape}s are there?", str(n)))
        if n == 1:
            one = next(o for o in objs if o.shape == shape)
            qa.append((f"What colour is the {shape}?", one.colour))
            qa.append((f"Where is the {shape}?", f"{position(one, w, h)}"))
    for colour in COLOURS:
        n = sum(o.colour == colour for o in objs)
        if n:
            qa.append((f"How many {colour} shapes are there?", str(n)))
        if n == 1:
            one = next(o for o in objs if o.colour == colour)
            qa.append((f"What shape is {colour}?", f"a {one.shape}"))
    for _ in range(2):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        present = any((o.colour, o.shape) == (colour, shape) for o in objs)
        qa.append((f"Is there a {colour} {shape}?", "yes" if present else "no"))
    for o in objs:  # what lies where, for the objects alone in their part of the image
        where = position(o, w, h)
        if [position(x, w, h) for x in objs].count(where) == 1:
            qa.append((f"What is in the {where} of the image?", f"{o.with_article}"))
    rng.shuffle(qa)
    return qa


def generate(seed: int, index: int) -> Sample:
    """QA scene `index` of the stream `seed`: 3-5 question-answer pairs in the caption."""
    rng = sample_rng("qa", seed, index)
    scene = sample_scene(rng, 2, 6, unique=False)
    image = render(scene, rng)
    pairs = questions(scene, rng)[: rng.randint(3, 5)]
    caption = " ".join(f"Question: {q} Answer: {a}." for q, a in pairs)
    structure = {**scene.as_dict(), "qa": [{"question": q, "answer": a} for q, a in pairs]}
    return Sample(png_bytes(image), caption, structure)
