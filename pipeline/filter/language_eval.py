"""A short-caption language-ID evaluation set from Unicode CLDR, as Debian's unicode-cldr-core ships it.

Shared by tests/pipeline/filter/test_language_short.py and benchmarks/language_short.py. Every caption is
real text written by native speakers, 1-4 words, of the kinds web alt-texts hold:
- things: CLDR's emoji names and keywords, not those of arrows, punctuation and other symbols
  (`common/annotations/<lang>.xml`: ``door``, ``fog``, ``axe``, ``red apple``, ``deur``, ``köd`` ...);
- names: country and region names and city names (`common/main/<lang>.xml`: territories, exemplar
  cities of the time zones; English ones CLDR does not override come from the zone ids), in the English set
  as written in English (``Germany``, ``Buenos Aires``).
A non-English caption that is also an English caption (``taxi``, ``Canada``, ``pizza``), or a name whose
words are all words of English names (``Petersburg, Indiana``), is left out of the non-English side: it is
English too. An English caption that one of the other languages also writes so (case-folded: ``taxi``,
``Jakarta``, ``合``) cannot be right on both sides either: it is *ambiguous*, left out of the English side
by default and reported on its own (`english(kind="ambiguous")`). Each language contributes at most
`per_language` captions, drawn with a fixed seed, so the score is a mean over languages, not dominated by the
largest list.
"""

from __future__ import annotations

import random
import re
from functools import cache
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree

CLDR = Path("/usr/share/unicode/cldr/common")
OTHER_LANGUAGES = ("de", "fr", "es", "it", "pt", "nl", "pl", "sv", "da", "hu", "tr", "ro", "ru")
MAX_WORDS = 4
_LETTER = re.compile(r"[^\W\d_]")
_WORDS = re.compile(r"[^\W\d_]+")
# Which English captions a set holds: those no other language writes the same (the default), only those
# (`ambiguous`), or all (the sets before session 11).
Kind = Literal["unambiguous", "ambiguous", "all"]


def available() -> bool:
    return (CLDR / "annotations" / "en.xml").is_file()


def _is_emoji(cp: str) -> bool:
    return any(ord(ch) >= 0x1F000 or 0x2600 <= ord(ch) <= 0x27BF for ch in cp)


def _usable(text: str) -> bool:
    return 1 <= len(text.split()) <= MAX_WORDS and bool(_LETTER.search(text)) and ":" not in text


@cache
def things(lang: str) -> tuple[str, ...]:
    """Emoji names and keywords of `lang` (lower case, as CLDR writes them)."""
    root = ElementTree.parse(CLDR / "annotations" / f"{lang}.xml").getroot()
    out: set[str] = set()
    for node in root.iter("annotation"):
        if not _is_emoji(node.get("cp", "")):  # not arrows, punctuation and other symbols' jargon
            continue
        parts = [node.text or ""] if node.get("type") == "tts" else (node.text or "").split("|")
        out.update(p.strip() for p in parts if _usable(p.strip()))
    return tuple(sorted(out))


@cache
def names(lang: str) -> tuple[str, ...]:
    """Territory and city names of `lang` (capitalised)."""
    root = ElementTree.parse(CLDR / "main" / f"{lang}.xml").getroot()
    found = [t.text or "" for t in root.iter("territory") if not t.get("alt")]
    found += [c.text or "" for c in root.iter("exemplarCity") if not c.get("alt")]
    if lang == "en":  # English city names CLDR does not override are the zone ids' (America/Rankin_Inlet)
        zones = ElementTree.parse(CLDR / "bcp47" / "timezone.xml").getroot()
        found += [
            alias.rsplit("/", 1)[-1].replace("_", " ")
            for t in zones.iter("type") for alias in (t.get("alias") or "").split() if "/" in alias
        ]
    return tuple(sorted({n.strip() for n in found if _usable(n.strip()) and n[:1].isupper()}))


def of_kind(pool: set[str], elsewhere: set[str], kind: Kind) -> list[str]:
    """`pool`'s captions of `kind` (sorted): ambiguous ones are, case-folded, in `elsewhere`."""
    if kind == "all":
        return sorted(pool)
    return sorted(t for t in pool if (t.casefold() in elsewhere) == (kind == "ambiguous"))


def english(per_language: int = 1500, seed: int = 0, kind: Kind = "unambiguous") -> list[str]:
    elsewhere = {t.casefold() for lang in OTHER_LANGUAGES for t in (*things(lang), *names(lang))}
    pool = of_kind(set(things("en")) | set(names("en")), elsewhere, kind)
    return random.Random(seed).sample(pool, min(per_language, len(pool)))


def others(per_language: int = 500, seed: int = 0) -> dict[str, list[str]]:
    """Per language: captions that are not also English captions."""
    known = {t.casefold() for t in (*things("en"), *names("en"))}
    name_words = {w.casefold() for n in names("en") for w in _WORDS.findall(n)}
    out = {}
    for lang in OTHER_LANGUAGES:
        pool = sorted(
            {t for t in things(lang) if t.casefold() not in known}
            | {n for n in names(lang) if not {w.casefold() for w in _WORDS.findall(n)} <= name_words}
        )
        out[lang] = random.Random(seed).sample(pool, min(per_language, len(pool)))
    return out
