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
by default and reported on its own (`english(kind="ambiguous")`).

The same holds the other way (session 13). A non-English caption every word of which the English source
itself writes (French ``air``, ``sport``, ``application``; German ``Symbol``; Danish ``blond person``) reads
as English too, though no English caption is identical to it. Such a caption is *ambiguous* as well: left
out of the non-English side by default and reported on its own (`others(kind="ambiguous")`). The rule is
defined by the English source, never by the classifier's lexicons (`english_words`, `written_in_english`):
- the English source's words are the words of its unambiguous captions (an English caption another
  language also writes, ``Rio de Janeiro``, lends it no words: ``de``);
- a word is letters, apostrophes inside it included (``you've`` is one word, not ``you`` and ``ve``);
- a word counts only with 2+ letters (``y``, ``e``, ``i`` are conjunctions elsewhere, and letters in
  English: ``Y position``); a lower-case word only if the source writes it in lower case somewhere (``el``
  of ``El Salvador`` does not make Spanish ``el`` English), a capitalised one only if the source writes it
  other than as an acronym (``DAS``, ``SIL`` do not make German ``Das``, Turkish ``Sil`` English);
- every word of the caption must count: strict, so ``tennis de table`` and ``type A`` stay non-English.
Each language contributes at most
`per_language` captions, drawn with a fixed seed, so the score is a mean over languages, not dominated by the
largest list.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree

CLDR = Path("/usr/share/unicode/cldr/common")
OTHER_LANGUAGES = ("de", "fr", "es", "it", "pt", "nl", "pl", "sv", "da", "hu", "tr", "ro", "ru")
MAX_WORDS = 4
_LETTER = re.compile(r"[^\W\d_]")
_WORDS = re.compile(r"[^\W\d_]+")
_WORD_APOSTROPHE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # `you've`, `d'Ivoire`: one word each
# Which captions a side holds: those the other side does not also write (the default), only those
# (`ambiguous`), or all (English: the sets before session 11; non-English: before session 13).
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


def of_kind(pool: set[str], ambiguous: Callable[[str], bool], kind: Kind) -> list[str]:
    """`pool`'s captions of `kind` (sorted)."""
    if kind == "all":
        return sorted(pool)
    return sorted(t for t in pool if ambiguous(t) == (kind == "ambiguous"))


def _case(word: str) -> int:
    """0 lower case (``air``), 1 capitalised or mixed (``Air``), 2 upper case (``AIR``)."""
    return 0 if word.islower() else 2 if word.isupper() else 1


def english_words(captions: Iterable[str]) -> dict[str, int]:
    """The words of 2+ letters an English source writes (case-folded) -> the lowest case it writes them in
    (`_case`)."""
    out: dict[str, int] = {}
    for text in captions:
        for w in _WORD_APOSTROPHE.findall(text):
            if len(w) >= 2:
                out[w.casefold()] = min(out.get(w.casefold(), 2), _case(w))
    return out


def written_in_english(text: str, words: dict[str, int]) -> bool:
    """Whether every word of `text` is one the English source writes (`words`: `english_words`) in the same
    case or a lower one: a lower-case word in lower case, a capitalised one not only as an acronym."""
    found = _WORD_APOSTROPHE.findall(text)
    return bool(found) and all(len(w) >= 2 and words.get(w.casefold(), 3) <= _case(w) for w in found)


def english(per_language: int = 1500, seed: int = 0, kind: Kind = "unambiguous") -> list[str]:
    pool = of_kind(_english_captions(), _written_elsewhere, kind)
    return random.Random(seed).sample(pool, min(per_language, len(pool)))


def _english_captions() -> set[str]:
    return set(things("en")) | set(names("en"))


def _written_elsewhere(text: str) -> bool:
    """Whether another language writes the English caption `text` too (case-folded): ambiguous."""
    return text.casefold() in _elsewhere()


@cache
def _elsewhere() -> frozenset[str]:
    """Every caption of the other languages, case-folded."""
    return frozenset(t.casefold() for lang in OTHER_LANGUAGES for t in (*things(lang), *names(lang)))


def others(per_language: int = 500, seed: int = 0, kind: Kind = "unambiguous") -> dict[str, list[str]]:
    """Per language: captions that are not also English captions, of `kind` (module docstring)."""
    known = {t.casefold() for t in _english_captions()}
    name_words = {w.casefold() for n in names("en") for w in _WORDS.findall(n)}
    words = english_words(of_kind(_english_captions(), _written_elsewhere, "unambiguous"))
    out = {}
    for lang in OTHER_LANGUAGES:
        pool = of_kind(
            {t for t in things(lang) if t.casefold() not in known}
            | {n for n in names(lang) if not {w.casefold() for w in _WORDS.findall(n)} <= name_words},
            lambda t: written_in_english(t, words), kind,
        )
        out[lang] = random.Random(seed).sample(pool, min(per_language, len(pool)))
    return out
