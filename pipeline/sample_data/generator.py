"""Row generation: the kind plan, one builder per kind, and the uniqueness guards."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .captions import (
    SHORT_MAX_WORDS,
    boilerplate_caption,
    caption_variant,
    english_long,
    english_short,
    foreign_caption,
    load_i18n,
    normalise_caption,
    plausible,
    reads_as_english,
    style,
)
from .encoding import (
    CLEAN_VARIANTS,
    CORRUPT_VARIANTS,
    corrupt_bytes,
    decoded_phash,
    encode,
    is_truncated_jpeg,
    is_unidentified,
    phash,
    truncate,
)
from .neardup import NearDupIndex
from .scenes import Scene, render, sample_scene
from .vocab import BASIC_COLOURS, BASIC_SHAPES, URL_DIRS, URL_HOSTS

# Share of each kind among all rows (sums to 1). kind -> (expected_stage, expected_reason) in EXPECTED.
PROPORTIONS: dict[str, float] = {
    "clean": 0.61,
    "non_english": 0.12,
    "exact_duplicate": 0.04,
    "near_duplicate_caption": 0.04,
    "boilerplate": 0.04,
    "empty_caption": 0.03,
    "too_small": 0.03,
    "extreme_aspect": 0.03,
    "corrupt_image": 0.03,
    "truncated_image": 0.03,
}
EXPECTED: dict[str, tuple[str | None, str | None]] = {
    "clean": (None, None),
    "non_english": ("language", "wrong_language"),
    "exact_duplicate": ("exact_dedup", "duplicate_image"),
    "near_duplicate_caption": ("exact_dedup", "duplicate_caption"),
    "boilerplate": ("caption", "boilerplate"),
    "empty_caption": ("caption", "empty_caption"),
    "too_small": ("image", "too_small"),
    "extreme_aspect": ("image", "aspect_ratio"),
    "corrupt_image": ("image", "corrupt_image"),
    "truncated_image": ("image", "truncated_image"),
}
# Share of clean rows stored in each odd format (the rest are baseline RGB JPEGs).
CLEAN_VARIANT_SHARE: dict[str, float] = {v: 0.01 for v in CLEAN_VARIANTS}
SHORT_CAPTION_SHARE = 0.35  # of clean captions and of non-English captions: 1-4 words
# Defect rows (too_small, extreme_aspect, corrupt_image, truncated_image) and the clean rows that duplicates
# copy get long captions only, so that language ID (unsure on 1-4 words) cannot reject them first.
TEXT_IN_IMAGE_SHARE = 0.15  # of the images drawn with English captions
OBJECT_COUNT_WEIGHTS: dict[int, float] = {1: 0.45, 2: 0.35, 3: 0.20}
CLEAN_SIDE = (128, 384)  # clean sides; aspect ratio within [0.5, 2]
SMALL_SIDE = (16, 40)  # too_small: both sides below 48
EXTREME_LONG_SIDE = (320, 800)  # extreme_aspect: ratio >= 5, short side >= 64
EXTREME_SHORT_MIN = 64
MIN_PHASH_DISTANCE = 10  # least Hamming distance between the pHashes of any two decoded clean images
PHASH_PREFILTER_MARGIN = 2  # a render's own pHash must clear the limit by this much before it is encoded
EMPTY_CAPTIONS: tuple[str, ...] = ("", "", " ", "  ", "\n", "\t", " \n ")
DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate_caption")
MAX_TRIES = 200
DISTINCT_RENDER_TRIES = 20  # re-renders of one scene before drawing another one (pHash guard)


@dataclass
class Row:
    """One sample: what goes into the tar and the ground truth line."""

    key: str
    kind: str
    data: bytes
    ext: str
    caption: str
    width: int | None
    height: int | None
    url: str
    lang: str | None = None
    variant: str | None = None
    duplicate_of: str | None = None
    text_in_image: str | None = None

    def ground_truth(self) -> dict:
        stage, reason = EXPECTED[self.kind]
        return {
            "key": self.key, "kind": self.kind, "expected_stage": stage, "expected_reason": reason,
            "n_words": len(self.caption.split()), "lang": self.lang, "duplicate_of": self.duplicate_of,
            "variant": self.variant, "text_in_image": self.text_in_image,
        }


def allocate(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of `total` by `shares` (ties by dict order), so counts sum to `total`."""
    weight = sum(shares.values())
    exact = {k: total * v / weight for k, v in shares.items()}
    counts = {k: math.floor(x) for k, x in exact.items()}
    by_remainder = sorted(shares, key=lambda k: counts[k] - exact[k])
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def plan_kinds(n: int, rng: random.Random) -> list[str]:
    """Kinds in a seeded random order in which every duplicate has an unused clean row before it."""
    kinds = [k for k, c in allocate(n, PROPORTIONS).items() for _ in range(c)]
    rng.shuffle(kinds)
    available = 0
    for i, kind in enumerate(kinds):
        if kind in DUPLICATE_KINDS:
            if available:
                available -= 1
                continue
            j = next((j for j in range(i + 1, n) if kinds[j] == "clean"), None)
            if j is None:
                kinds[i] = "clean"
            else:
                kinds[i], kinds[j] = kinds[j], kinds[i]
        if kinds[i] == "clean":
            available += 1
    return kinds


def plan_originals(kinds: list[str], rng: random.Random) -> dict[int, int]:
    """Duplicate row index -> the earlier clean row it copies (each clean row is copied at most once)."""
    pool: list[int] = []
    out: dict[int, int] = {}
    for i, kind in enumerate(kinds):
        if kind == "clean":
            pool.append(i)
        elif kind in DUPLICATE_KINDS:
            out[i] = pool.pop(rng.randrange(len(pool)))
    return out


def plan_variants(kinds: list[str], rng: random.Random) -> dict[int, str]:
    """Row index -> odd format, for a fixed share of the clean rows."""
    clean = [i for i, k in enumerate(kinds) if k == "clean"]
    rest = dict(CLEAN_VARIANT_SHARE, jpeg=1.0 - sum(CLEAN_VARIANT_SHARE.values()))
    counts = allocate(len(clean), rest)
    chosen = rng.sample(clean, len(clean) - counts["jpeg"])
    out: dict[int, str] = {}
    for variant in CLEAN_VARIANTS:
        for i in chosen[: counts[variant]]:
            out[i] = variant
        chosen = chosen[counts[variant] :]
    return out


class Guards:
    """Keeps captions (normalised), image bytes and clean-image pHashes unique across the rows."""

    def __init__(self) -> None:
        self.captions: set[str] = set()
        self.digests: set[bytes] = set()
        self.hashes = np.zeros(1024, dtype=np.uint64)
        self.n_hashes = 0

    def caption_free(self, caption: str) -> bool:
        return normalise_caption(caption) not in self.captions

    def add_caption(self, caption: str) -> None:
        self.captions.add(normalise_caption(caption))

    def bytes_free(self, data: bytes) -> bool:
        return hashlib.sha256(data).digest() not in self.digests

    def add_bytes(self, data: bytes) -> None:
        self.digests.add(hashlib.sha256(data).digest())

    def phash_free(self, value: int, margin: int = 0) -> bool:
        if not self.n_hashes:
            return True
        xor = self.hashes[: self.n_hashes] ^ np.uint64(value)
        return int(np.bitwise_count(xor).min()) >= MIN_PHASH_DISTANCE + margin

    def add_phash(self, value: int) -> None:
        if self.n_hashes == len(self.hashes):
            self.hashes = np.concatenate([self.hashes, np.zeros_like(self.hashes)])
        self.hashes[self.n_hashes] = value
        self.n_hashes += 1


class RowFactory:
    """Builds the rows of one run in order; all randomness comes from (seed, row index)."""

    def __init__(self, seed: int, wanted: set[str] | None = None,
                 clean_short_share: float = SHORT_CAPTION_SHARE) -> None:
        self.seed = seed
        self.guards = Guards()
        self.near_dups = NearDupIndex()
        self.wanted = wanted or set()  # keys of clean rows a later duplicate will copy
        self.clean_short_share = clean_short_share  # of the clean rows not in `wanted`
        self.scenes: dict[str, Scene] = {}  # wanted key -> scene, for near duplicates
        self.rows: dict[str, Row] = {}  # wanted key -> row
        self.languages = sorted(load_i18n())
        self.short_share = _short_share_by_language()

    def build(self, index: int, key: str, kind: str, variant: str | None, original: str | None) -> Row:
        """Row `index`; `original` is the key of the clean row a duplicate copies."""
        rng = random.Random(f"{self.seed}/{index}")
        row = getattr(self, f"_{kind}")(rng, key, variant if original is None else original)
        if key not in self.wanted:
            self.scenes.pop(key, None)
        else:
            self.rows[key] = row
        return row

    def _url(self, rng: random.Random, ext: str) -> str:
        return f"https://{rng.choice(URL_HOSTS)}/{rng.choice(URL_DIRS)}/{rng.getrandbits(48):012x}.{ext}"

    def _english(self, rng: random.Random, width: int, height: int, short_share: float = 0.0,
                 apart: bool = False) -> tuple[Scene, str]:
        """A scene and an unused English caption of it, 1-4 words with chance `short_share` (falling back to
        a long one when short ones run out); `apart`: no near duplicate of an earlier clean caption."""
        short = rng.random() < short_share
        for attempt in range(MAX_TRIES):
            brief = short and attempt < MAX_TRIES // 4
            n_objects = 1 if brief else _weighted(rng, OBJECT_COUNT_WEIGHTS)
            scene = sample_scene(rng, width, height, n_objects, with_text=rng.random() < TEXT_IN_IMAGE_SHARE)
            caption = style(english_short(scene, rng) if brief else english_long(scene, rng), rng)
            if brief and len(caption.split()) > SHORT_MAX_WORDS or not plausible(caption):
                continue
            if self.guards.caption_free(caption) and (not apart or self.near_dups.try_add(caption)):
                self.guards.add_caption(caption)
                return scene, caption
        raise RuntimeError("could not draw an unused English caption")

    def _picture(self, rng: random.Random, scene: Scene, variant: str | None = None,
                 distinct: bool = False) -> tuple[bytes, str, Image.Image]:
        """Renders and encodes until the bytes (and, if `distinct`, the decoded image's pHash) are unused;
        registers them. The render's own pHash screens candidates before the cost of encoding."""
        for _ in range(DISTINCT_RENDER_TRIES if distinct else MAX_TRIES):
            image = render(scene, rng)
            if distinct and not self.guards.phash_free(phash(image), PHASH_PREFILTER_MARGIN):
                continue
            data, ext = encode(image, variant, rng)
            value = decoded_phash(data) if distinct else 0
            if self.guards.bytes_free(data) and (not distinct or self.guards.phash_free(value)):
                self.guards.add_bytes(data)
                if distinct:
                    self.guards.add_phash(value)
                return data, ext, image
        raise RuntimeError("could not draw an unused image")

    def _english_row(self, rng: random.Random, key: str, kind: str, width: int, height: int,
                     variant: str | None = None, short_share: float = 0.0, distinct: bool = False) -> Row:
        for _ in range(MAX_TRIES):
            scene, caption = self._english(rng, width, height, short_share, apart=distinct)
            try:
                data, ext, _ = self._picture(rng, scene, variant, distinct)
                break
            except RuntimeError:  # looks too much like earlier images; its caption stays used, draw another
                continue
        else:
            raise RuntimeError("could not draw a distinct scene")
        if kind == "clean":
            self.scenes[key] = scene
        text = scene.text.text if scene.text else None
        return Row(key, kind, data, ext, caption, width, height, self._url(rng, ext), lang="en",
                   variant=variant, text_in_image=text)

    def _clean(self, rng: random.Random, key: str, variant: str | None) -> Row:
        # Rows a duplicate will copy get long captions, which language ID never doubts: a short one it wrongly
        # drops would leave the duplicate as the survivor. The other clean rows make up the short share.
        share = 0.0 if key in self.wanted else self.clean_short_share
        return self._english_row(rng, key, "clean", *clean_size(rng), variant=variant, short_share=share,
                                 distinct=True)

    def _non_english(self, rng: random.Random, key: str, variant: str | None) -> Row:
        lang = rng.choice(self.languages)
        width, height = clean_size(rng)
        scene, caption = self.foreign(rng, lang, width, height, short=rng.random() < self.short_share[lang])
        data, ext, _ = self._picture(rng, scene)
        return Row(key, "non_english", data, ext, caption, width, height, self._url(rng, ext), lang=lang)

    def foreign(self, rng: random.Random, lang: str, width: int, height: int,
                short: bool) -> tuple[Scene, str]:
        """A plain scene and an unused caption of it in `lang` that cannot pass for English; short captions
        fall back to long ones when the short ones run out."""
        for attempt in range(MAX_TRIES):
            brief = short and attempt < MAX_TRIES // 4
            n_objects = 1 if brief else _weighted(rng, OBJECT_COUNT_WEIGHTS)
            scene = sample_scene(rng, width, height, n_objects, BASIC_COLOURS, BASIC_SHAPES, plain=True)
            caption = foreign_caption(scene, lang, rng, brief)
            if brief and len(caption.split()) > SHORT_MAX_WORDS or not plausible(caption):
                continue
            if not reads_as_english(caption) and self.guards.caption_free(caption):
                break
        else:
            raise RuntimeError(f"could not draw an unused {lang} caption")
        self.guards.add_caption(caption)
        return scene, caption

    def _exact_duplicate(self, rng: random.Random, key: str, original: str) -> Row:
        orig = self.rows.pop(original)
        return Row(key, "exact_duplicate", orig.data, orig.ext, orig.caption, orig.width, orig.height,
                   self._url(rng, orig.ext), lang="en", variant=orig.variant, duplicate_of=orig.key,
                   text_in_image=orig.text_in_image)

    def _near_duplicate_caption(self, rng: random.Random, key: str, original: str) -> Row:
        orig, scene = self.rows.pop(original), self.scenes.pop(original)
        data, ext, _ = self._picture(rng, scene)
        caption = caption_variant(orig.caption, rng)
        return Row(key, "near_duplicate_caption", data, ext, caption, scene.width, scene.height,
                   self._url(rng, ext), lang="en", duplicate_of=orig.key, text_in_image=orig.text_in_image)

    def _random_picture_row(self, rng: random.Random, key: str, kind: str, caption: str,
                            variant: str | None) -> Row:
        width, height = clean_size(rng)
        n_objects = _weighted(rng, OBJECT_COUNT_WEIGHTS)
        scene = sample_scene(rng, width, height, n_objects, with_text=rng.random() < TEXT_IN_IMAGE_SHARE)
        data, ext, _ = self._picture(rng, scene)
        text = scene.text.text if scene.text else None
        return Row(key, kind, data, ext, caption, width, height, self._url(rng, ext), variant=variant,
                   text_in_image=text)

    def _boilerplate(self, rng: random.Random, key: str, variant: str | None) -> Row:
        for _ in range(MAX_TRIES):
            caption = boilerplate_caption(rng, self.guards.captions)
            if self.guards.caption_free(caption):
                break
        else:
            raise RuntimeError("could not draw an unused boilerplate caption")
        self.guards.add_caption(caption)
        return self._random_picture_row(rng, key, "boilerplate", caption, None)

    def _empty_caption(self, rng: random.Random, key: str, variant: str | None) -> Row:
        caption = rng.choice(EMPTY_CAPTIONS)
        form = "empty" if not caption else "whitespace"
        return self._random_picture_row(rng, key, "empty_caption", caption, form)

    def _too_small(self, rng: random.Random, key: str, variant: str | None) -> Row:
        width, height = _sides(rng, *SMALL_SIDE)
        return self._english_row(rng, key, "too_small", width, height)

    def _extreme_aspect(self, rng: random.Random, key: str, variant: str | None) -> Row:
        long = rng.randint(*EXTREME_LONG_SIDE)
        short = rng.randint(EXTREME_SHORT_MIN, long // 5)
        wide = rng.random() < 0.5
        width, height = (long, short) if wide else (short, long)
        row = self._english_row(rng, key, "extreme_aspect", width, height)
        row.variant = "wide" if wide else "tall"
        return row

    def _corrupt_image(self, rng: random.Random, key: str, variant: str | None) -> Row:
        form = rng.choice(CORRUPT_VARIANTS)
        for _ in range(MAX_TRIES):
            data = corrupt_bytes(form, rng)
            if is_unidentified(data) and self.guards.bytes_free(data):
                break
        else:
            raise RuntimeError("could not draw unused corrupt bytes")
        self.guards.add_bytes(data)
        _, caption = self._english(rng, *clean_size(rng))
        return Row(key, "corrupt_image", data, "jpg", caption, None, None, self._url(rng, "jpg"), lang="en",
                   variant=form)

    def _truncated_image(self, rng: random.Random, key: str, variant: str | None) -> Row:
        width, height = clean_size(rng)
        scene, caption = self._english(rng, width, height)
        for _ in range(MAX_TRIES):
            full, _, _ = self._picture(rng, scene)
            data = truncate(full, rng)
            if is_truncated_jpeg(data) and self.guards.bytes_free(data):
                break
        else:
            raise RuntimeError("could not draw a truncated JPEG")
        self.guards.add_bytes(data)
        text = scene.text.text if scene.text else None
        return Row(key, "truncated_image", data, "jpg", caption, width, height, self._url(rng, "jpg"),
                   lang="en", text_in_image=text)


def _short_share_by_language() -> dict[str, float]:
    """Chance of a short caption per language, so that SHORT_CAPTION_SHARE of the non-English captions
    have 1-4 words: every caption of a language written without spaces (zh, ja) counts as one word."""
    i18n = load_i18n()
    unspaced = {lang for lang, cfg in i18n.items() if " " not in cfg["np"] + cfg["templates"]["plain"]}
    spaced = len(i18n) - len(unspaced)
    rest = max(0.0, (SHORT_CAPTION_SHARE * len(i18n) - len(unspaced)) / spaced) if spaced else 0.0
    return {lang: SHORT_CAPTION_SHARE if lang in unspaced else rest for lang in i18n}


def _weighted(rng: random.Random, weights: dict[int, float]) -> int:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _sides(rng: random.Random, lo: int, hi: int) -> tuple[int, int]:
    """Width and height in [lo, hi] with aspect ratio within [0.5, 2]."""
    width = rng.randint(lo, hi)
    height = rng.randint(max(lo, math.ceil(width / 2)), min(hi, 2 * width))
    return (width, height) if rng.random() < 0.5 else (height, width)


def clean_size(rng: random.Random) -> tuple[int, int]:
    """Width and height of a clean image: sides 128-384 px, aspect ratio within [0.5, 2]."""
    return _sides(rng, *CLEAN_SIDE)


def generate_rows(n: int, seed: int, shard_size: int) -> Iterator[Row]:
    """Yields the n rows in key order."""
    rng = random.Random(seed)
    kinds = plan_kinds(n, rng)
    variants = plan_variants(kinds, rng)
    originals = plan_originals(kinds, rng)
    keys = [f"{i // shard_size:05d}{i % shard_size:04d}" for i in range(n)]
    n_clean, n_copied = kinds.count("clean"), len(originals)
    free = n_clean - n_copied
    short_share = min(1.0, SHORT_CAPTION_SHARE * n_clean / free) if free else 0.0
    factory = RowFactory(seed, {keys[i] for i in originals.values()}, short_share)
    for index, kind in enumerate(kinds):
        original = keys[originals[index]] if index in originals else None
        yield factory.build(index, keys[index], kind, variants.get(index), original)
