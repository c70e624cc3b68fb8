"""A held-out evaluation set: clean single-object scenes, each with a long English caption and a class
label (its shape), for `vlmforge eval-curation`.

Disjoint from training data by construction: its rows come from their own random stream (``eval/<seed>``,
never a training row's ``<seed>/<index>``), none is a copy of another row, and the uniqueness guards start
out holding the image sha256s and normalised captions of the training sets named in `exclude`, so no eval
pair repeats one of theirs. `vlmforge eval-curation` checks it again against every run it trains on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from vlmforge.pipeline.evaluate.heldout import PairKeys

from .captions import english_long, plausible, style
from .generator import MAX_TRIES, Row, RowFactory, clean_size
from .scenes import sample_scene
from .vocab import SHAPES

EVAL_KEY = "eval{:06d}"


def shape_label(shape: str) -> str:
    """The class label of a shape: its first English name ('circle', 'cross')."""
    return SHAPES[shape][0][0]


class EvalRowFactory(RowFactory):
    """Builds labelled eval rows; `exclude` seeds the guards with training pairs' keys."""

    def __init__(self, seed: int, exclude: PairKeys | None = None) -> None:
        super().__init__(seed)
        if exclude is not None:
            self.guards.captions |= exclude.captions  # both in normalise_caption's form
            self.guards.digests |= {bytes.fromhex(h) for h in exclude.images}

    def labelled(self, index: int) -> tuple[Row, str]:
        """Row `index` and its label."""
        rng = random.Random(f"eval/{self.seed}/{index}")
        key = EVAL_KEY.format(index)
        width, height = clean_size(rng)
        for _ in range(MAX_TRIES):
            scene = sample_scene(rng, width, height, 1)
            caption = style(english_long(scene, rng), rng)
            if not plausible(caption) or not self.guards.caption_free(caption):
                continue
            try:
                data, ext, _ = self._picture(rng, scene, distinct=True)
            except RuntimeError:  # looks too much like an earlier image: draw another scene
                continue
            self.guards.add_caption(caption)
            row = Row(key, "clean", data, ext, caption, width, height, self._url(rng, ext), lang="en")
            return row, shape_label(scene.objects[0].shape)
        raise RuntimeError("could not draw an unused eval pair")


def generate_eval_rows(n: int, seed: int, exclude: PairKeys | None = None) -> Iterator[tuple[Row, str]]:
    """(row, label) for the n eval rows, in key order."""
    factory = EvalRowFactory(seed, exclude)
    for index in range(n):
        yield factory.labelled(index)
