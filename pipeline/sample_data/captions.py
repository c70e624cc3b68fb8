"""Scene captions: English (long and 1-4 word), translated (captions_i18n.json), variants, boilerplate."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from .scenes import Obj, Scene
from .vocab import (
    BOILERPLATE_PATTERNS,
    BOILERPLATE_PHRASES,
    CELLS,
    COLOURS,
    COUNT_WORDS,
    ENGLISH_LOOKALIKES,
    SHAPES,
    SIZES,
    TEXTURES,
)

I18N_PATH = Path(__file__).resolve().parent / "captions_i18n.json"
_PUNCT = re.compile(r"[^\w\s]|_")
_WORD = re.compile(r"\w+")
SHORT_MAX_WORDS = 4
# Captions that should pass the caption heuristics stay well inside these (curation defaults: 0.3, 0.5).
MAX_SYMBOL_RATIO = 0.2  # share of characters that are neither alphanumeric nor space
MAX_REPEATED_WORD_RATIO = 0.4  # 1 - distinct words / words, for captions of 4 or more words

PREFIXES: tuple[str, ...] = (
    "an image of", "a picture of", "a drawing of", "an illustration of", "a simple graphic of", "clip art of",
    "a flat illustration of", "a minimalist drawing of", "a digital drawing of", "a vector graphic showing",
    "a cartoon of", "a simple picture showing", "artwork with",
)
BG_PLAIN: tuple[str, ...] = (
    "on {a} {bg} background", "against {a} {bg} background", "on a soft {bg} background",
    "over {a} {bg} backdrop", "with {a} {bg} background", "set on {a} {bg} background",
    "on a mottled {bg} background",
)
BG_GRADIENT: tuple[str, ...] = (
    "on {a} {bg} gradient background", "against {a} {bg} gradient",
    "on a background fading from {bg} to dark",
)
TEXT_ROW_PHRASES: dict[int, tuple[str, ...]] = {
    0: ("at the top", "across the top"), 1: ("in the middle", "across the middle"),
    2: ("at the bottom", "across the bottom"),
}


def normalise_caption(text: str) -> str:
    """NFKC, case-folded, punctuation (and underscores) to spaces, whitespace collapsed: the exact-dedup
    key (as pipeline/filter/text.py's normalize_for_dedup)."""
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


def plausible(caption: str) -> bool:
    """True when the caption is far from the symbol-ratio and repeated-word limits of caption checks."""
    text = " ".join(caption.split())
    if not text or sum(not (c.isalnum() or c.isspace()) for c in text) > MAX_SYMBOL_RATIO * len(text):
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    return len(words) < 4 or 1 - len(set(words)) / len(words) <= MAX_REPEATED_WORD_RATIO


# Words the English templates add around the vocabulary (relations, text mentions, joins).
TEMPLATE_WORDS = "a an and with background above below to the left right of next word words text sign reading"


@lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    """Every word the English captions can use, apart from the text rendered in images."""
    phrases = [TEMPLATE_WORDS, "saying written in on", *PREFIXES, *BG_PLAIN, *BG_GRADIENT]
    phrases += [p for ps in TEXT_ROW_PHRASES.values() for p in ps]
    phrases += [n for _, names in COLOURS.values() for n in names]
    phrases += [n for forms in SHAPES.values() for names in forms for n in names]
    phrases += [w for _, words in SIZES.values() for w in words] + [w for ws in TEXTURES.values() for w in ws]
    phrases += [p for _, _, ps in CELLS.values() for p in ps] + [w for ws in COUNT_WORDS.values() for w in ws]
    words = (w for p in phrases for w in _WORD.findall(re.sub(r"\{\w+\}", " ", p)))
    return frozenset(words) | ENGLISH_LOOKALIKES


def reads_as_english(caption: str) -> bool:
    """True when every word of the caption is an English scene word or an English look-alike."""
    words = [w.lower() for w in _WORD.findall(caption)]
    return bool(words) and all(w in _english_words() for w in words)


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _join(items: list[str], sep: str = ", ", last: str = " and ") -> str:
    return items[0] if len(items) == 1 else sep.join(items[:-1]) + last + items[-1]


def _pick(options: tuple[str, ...], rng: random.Random, compact: bool = False) -> str:
    """A random option; `compact` draws among the options with the fewest words."""
    return rng.choice(_fewest_words(options) if compact else options)


@cache
def _fewest_words(options: tuple[str, ...]) -> tuple[str, ...]:
    """The options with the fewest words, in their order (the vocabulary's tuples, so few distinct ones)."""
    fewest = min(len(o.split()) for o in options)
    return tuple(o for o in options if len(o.split()) == fewest)


def _colour_word(colour: str, rng: random.Random, compact: bool = False) -> str:
    return _pick(COLOURS[colour][1], rng, compact)


def obj_phrase(obj: Obj, rng: random.Random, article: bool = True, with_pos: bool = False,
               sized: bool = True, compact: bool = False) -> str:
    """'a small striped red circle', 'two tiny teal stars in the top left'; `compact`: fewest words."""
    singular, plural = SHAPES[obj.shape]
    nouns = plural if obj.count > 1 else singular
    words = [
        _pick(SIZES[obj.size][1], rng, compact) if sized else "",
        _pick(TEXTURES[obj.texture], rng, compact),
        _colour_word(obj.colour, rng, compact),
        _pick(nouns, rng, compact),
    ]
    head = " ".join(w for w in words if w)
    if obj.count > 1:
        head = f"{_pick(COUNT_WORDS[obj.count], rng, compact)} {head}"
    elif article:
        head = f"{_article(head)} {head}"
    return f"{head} {rng.choice(CELLS[obj.cell][2])}" if with_pos else head


def _bg_phrase(scene: Scene, rng: random.Random) -> str:
    forms = BG_GRADIENT if scene.gradient else BG_PLAIN
    colour = _colour_word(scene.background, rng)
    return rng.choice(forms).format(a=_article(colour), bg=colour)


def _relation(a: Obj, b: Obj) -> str:
    (ca, ra, _), (cb, rb, _) = CELLS[a.cell], CELLS[b.cell]
    vertical = "above" if ra < rb else "below" if ra > rb else ""
    horizontal = "to the left of" if ca < cb else "to the right of" if ca > cb else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal


def _quoted(text: str) -> str:
    return f'the word "{text}"' if " " not in text else f'the words "{text}"'


def english_long(scene: Scene, rng: random.Random) -> str:
    """A sentence naming every object (with positions or a relation), the background and any text."""
    objs = scene.objects
    if scene.text is not None:
        return _english_with_text(scene, rng)
    with_pos = len(objs) > 1 or rng.random() < 0.6
    group = _join([obj_phrase(o, rng, with_pos=with_pos) for o in objs])
    bg = _bg_phrase(scene, rng)
    forms = [f"{group} {bg}", f"{rng.choice(PREFIXES)} {group} {bg}", f"{rng.choice(PREFIXES)} {group}"]
    bg_word = _colour_word(scene.background, rng)
    forms.append(f"{_article(bg_word)} {bg_word} background with {group}")
    if with_pos:
        forms.append(group)
    if len(objs) == 2:
        first, second = (obj_phrase(o, rng) for o in objs)
        forms.append(f"{first} {_relation(*objs)} {second} {bg}")
    return rng.choice(forms)


def _english_with_text(scene: Scene, rng: random.Random) -> str:
    assert scene.text is not None
    text, objs = scene.text, scene.objects
    row = CELLS[text.cell][1]
    where = rng.choice(TEXT_ROW_PHRASES[row])
    tc = _colour_word(text.colour, rng)
    group = _join([obj_phrase(o, rng, with_pos=rng.random() < 0.5) for o in objs])
    bg = _bg_phrase(scene, rng)
    forms = [
        f"{group} next to {_quoted(text.text)} {bg}",
        f"{_quoted(text.text)} {where} with {group} {bg}",
        f'a sign reading "{text.text}" with {group}',
        f'{group} and the text "{text.text}" in {tc} {bg}',
        f'{tc} text saying "{text.text}" {where} {bg}, with {group}',
        f"{_quoted(text.text)} written in {tc} {where} and {group}",
    ]
    rows = {CELLS[o.cell][1] for o in objs}
    if row == 0 and min(rows) > 0 or row == 2 and max(rows) < 2:
        forms.append(f"{_quoted(text.text)} {'above' if row == 0 else 'below'} {group} {bg}")
    return rng.choice(forms)


def english_short(scene: Scene, rng: random.Random) -> str:
    """A caption of the scene's main subject in as few words as it takes ('red circle', 'two teal stars',
    '"SALE" sign'); 1-4 words unless the subject needs more (the caller then draws another scene)."""
    obj = scene.objects[0]
    full = obj_phrase(obj, rng, article=False, compact=True)
    unsized = obj_phrase(obj, rng, article=False, sized=False, compact=True)
    forms = [full, full, unsized, obj_phrase(obj, rng, compact=True),
             f"{unsized} on {_colour_word(scene.background, rng, compact=True)}"]
    if scene.text is not None:
        colour = _colour_word(scene.text.colour, rng)
        forms += [f'"{scene.text.text}" sign', _quoted(scene.text.text), f'"{scene.text.text}" in {colour}']
    fitting = [f for f in forms if len(f.split()) <= SHORT_MAX_WORDS]
    return rng.choice(fitting) if fitting else unsized


def style(caption: str, rng: random.Random, capitalise: float = 0.45) -> str:
    """Web-like surface variety: sometimes a capital first letter, sometimes a full stop."""
    x = rng.random()
    if x < capitalise:
        caption = caption[:1].upper() + caption[1:]
        if x < capitalise / 3 and len(caption.split()) > SHORT_MAX_WORDS:
            caption += "."
    return caption


@lru_cache(maxsize=1)
def load_i18n() -> dict[str, Any]:
    """The translated vocabulary and templates, keyed by language code."""
    with open(I18N_PATH, encoding="utf-8") as f:
        return json.load(f)["languages"]


def _form(entry: str | dict[str, str], gender: str) -> str:
    return entry if isinstance(entry, str) else entry[gender]


def _fill(template: str, **slots: str) -> str:
    text = template.format(**slots)
    return " ".join(text.split()) if " " in template else text


def foreign_np(obj: Obj, cfg: dict[str, Any], article: bool) -> str:
    """A translated noun phrase ('une petite étoile rouge'); tiny/huge read as small/large."""
    word, gender = cfg["shapes"][obj.shape]
    size_key = {"tiny": "small", "huge": "large"}.get(obj.size, obj.size)
    size = _form(cfg["sizes"][size_key], gender) if size_key in cfg["sizes"] else ""
    art = _form(cfg["articles"], gender) if article and cfg["articles"] else ""
    template = cfg["np"] if article else cfg["np_short"]
    return _fill(template, art=art, size=size, colour=_form(cfg["colours"][obj.colour], gender), shape=word)


def foreign_caption(scene: Scene, lang: str, rng: random.Random, short: bool) -> str:
    """A caption of a plain scene (single solid shapes, basic colours) in language `lang`."""
    cfg = load_i18n()[lang]
    if short:
        caption = foreign_np(scene.objects[0], cfg, article=False)
    else:
        with_pos = len(scene.objects) > 1 and rng.random() < 0.8 or rng.random() < 0.4
        key = "pos" if with_pos else "plain"
        items = [foreign_np(o, cfg, article=True) for o in scene.objects]
        if with_pos:
            pairs = zip(items, scene.objects, strict=True)
            items = [_fill(cfg["obj_pos"], np=np, pos=cfg["positions"][o.cell]) for np, o in pairs]
        sep, last = cfg["join"][key]
        caption = _fill(cfg["templates"][key], objs=_join(items, sep, last), bg=cfg["bg"][scene.background])
    return style(caption, rng, capitalise=0.4) if cfg.get("capitalise", True) else caption


VARIANT_EDITS = ("upper", "title", "capitalise", "comma", "end_mark", "spaces", "pad")


def caption_variant(caption: str, rng: random.Random) -> str:
    """A different string with the same normalised caption (case, punctuation, whitespace edits)."""
    while True:
        text = caption
        for edit in rng.sample(VARIANT_EDITS, 2):
            text = _edit(text, edit, rng)
        if text != caption and normalise_caption(text) == normalise_caption(caption) and plausible(text):
            return text


def _edit(text: str, edit: str, rng: random.Random) -> str:
    words = text.split(" ")
    if edit == "upper":
        return text.upper()
    if edit == "title":
        return text.title()
    if edit == "capitalise":
        return text[:1].upper() + text[1:] if text[:1].islower() else text[:1].lower() + text[1:]
    if edit == "comma" and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        return " ".join(words[: i + 1]) + ", " + " ".join(words[i + 1 :])
    if edit == "end_mark":
        return text.rstrip(".") + rng.choice(("!", "!!", ".", "...", " !", "?"))
    if edit == "spaces" and len(words) > 1:
        i = rng.randrange(1, len(words))
        return " ".join(words[:i]) + rng.choice(("  ", "   ", "\t", " \n ")) + " ".join(words[i:])
    return rng.choice((" ", "  ", "\n")) + text + rng.choice((" ", "", "  "))


def boilerplate_caption(rng: random.Random, used: set[str]) -> str:
    """A filename-like or generic caption ('IMG_1234.jpg', 'click here'); phrases are used once each."""
    fresh = [p for p in BOILERPLATE_PHRASES if normalise_caption(p) not in used]
    if fresh and rng.random() < 0.3:
        return rng.choice(fresh)
    pattern = rng.choice(BOILERPLATE_PATTERNS)
    return pattern.format(
        n=rng.randint(1, 999), n4=f"{rng.randint(1, 9999):04d}", n5=f"{rng.randint(1, 99999):05d}",
        n7=f"{rng.randint(1, 9999999):07d}",
        n8=f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
    )
