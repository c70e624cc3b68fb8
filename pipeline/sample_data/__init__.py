"""Synthetic web-crawl image-text pairs with known defects, written as img2dataset webdataset shards.

Every row is one kind from `PROPORTIONS` (clean, non_english, duplicates, bad captions, bad images) and
ground_truth.jsonl says which curation stage and reason should drop it. Images are drawn scenes whose
captions describe them, so clean rows are also usable as a tiny training set. `write_eval_set` writes a
held-out set of labelled clean pairs apart from them (eval_set.py).
"""

from .captions import normalise_caption
from .generator import EXPECTED, MIN_PHASH_DISTANCE, PROPORTIONS, SHORT_CAPTION_SHARE
from .writer import write_eval_set, write_sample_data

__all__ = [
    "EXPECTED", "MIN_PHASH_DISTANCE", "PROPORTIONS", "SHORT_CAPTION_SHARE", "normalise_caption",
    "write_eval_set", "write_sample_data",
]
