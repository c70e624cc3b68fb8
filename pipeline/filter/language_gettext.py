"""A second real short-caption language-ID set: gettext catalogs shipped by Debian packages on this machine.

Each `/usr/share/locale/<lang>/LC_MESSAGES/<domain>.mo` maps English UI strings (msgids: ``Open Link``,
``Dark Gray``, ``Bad file descriptor``, ISO country, region, currency and script names) to translations
written by people (``Link öffnen``). Cleaning, so that a label is honest:
- strings with format directives, markup, paths, digits, identifiers (``%s``, ``<b>``, ``ftp://``,
  ``show_all``, ``oldestXID``), line breaks, or no lower-case letter (placeholders: ``FILE``) are left out;
  mnemonics (``_Open``, ``&Open``), a trailing ellipsis, colon or full stop and msgctxt prefixes are
  removed; 1-4 words with letters remain;
- a translation equal to its msgid, or equal to any English msgid of the set (``Terminal``, ``Dialog``),
  is English too and left out of the non-English side; such an English msgid, and any other that one of
  the languages' translations equals (case-folded: ``Namibia``, ``Mantova``), is *ambiguous*: left out of
  the English side by default and reported on its own (`english(split, kind="ambiguous")`);
- the other way round (session 13), a translation every word of which the English msgids themselves write
  (`language_eval.written_in_english`: ``Communication``, ``script Perl``, ``Desktop-Symbol``) is
  ambiguous too: left out of the non-English side by default (`others(split, kind="ambiguous")`). The
  English words are those of the unambiguous msgids of both splits, except ISO 3166-2's: its "English"
  subdivision names are written in each country's own language (``Asturias, Principado de``).
Splits: an English string and all its translations share a side, chosen by a stable hash of the msgid, so a
rule developed on ``dev`` is reported on ``test``. Each domain (package catalog) contributes in turn, so a
large catalog (ISO 3166-2's 5,000 subdivisions) does not dominate a language.
"""

from __future__ import annotations

import gettext
import random
import re
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from vlmforge.pipeline.filter.language_eval import (
    MAX_WORDS,
    OTHER_LANGUAGES,
    Kind,
    english_words,
    of_kind,
    written_in_english,
)

LOCALE = Path("/usr/share/locale")
SPLITS = ("dev", "test")
# Catalogs of thousands of obscure language names, mostly untranslated (``Ghotuo``): not captions.
_SKIP_DOMAINS = {"iso_639-3", "iso_639_3", "iso_639-5", "iso_639_5"}
# Subdivision names in each country's own language (``Asturias, Principado de``): no English words.
_NATIVE_NAMES = {"iso_3166-2", "iso_3166_2"}
_MNEMONIC = re.compile(r"(?<!\w)_(?=\w)|&(?=\w)")  # `_Open`, `Von-_links`, `&Open`; not `show_all`
_BAD = re.compile(r"[%{}<>\\/=@#$|\[\]\d_\n\t*]|\.\w")
_LETTER = re.compile(r"[^\W\d_]")
_CAMEL = re.compile(r"[^\W\d_A-Z]+[A-Z]")  # an identifier inside a word (``oldestXID``)


def available() -> bool:
    return any(LOCALE.glob("de/LC_MESSAGES/*.mo"))


def clean(text: str) -> str | None:
    """A UI string as a caption, or None when it is not one (see the module docstring)."""
    text = text.split("\x04", 1)[-1]  # msgctxt
    text = _MNEMONIC.sub("", text).strip().removesuffix("...").removesuffix("…").rstrip(":.").strip()
    if not text or _BAD.search(text) or _CAMEL.search(text) or not _LETTER.match(text) or text.isupper():
        return None
    return text if 1 <= len(text.split()) <= MAX_WORDS else None


def split_of(msgid: str) -> str:
    return SPLITS[zlib.crc32(msgid.encode()) % len(SPLITS)]


@cache
def _catalog(lang: str, domain: str) -> tuple[tuple[str, str], ...]:
    """(English, translation) pairs of one catalog, cleaned; the translation may be empty (left out)."""
    try:
        with open(LOCALE / lang / "LC_MESSAGES" / f"{domain}.mo", "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
    except (OSError, UnicodeDecodeError):
        return ()
    pairs = []
    for key, value in catalog.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            continue  # plural forms and the header
        if (en := clean(key)) is not None:
            pairs.append((en, clean(value) or ""))
    return tuple(pairs)


@cache
def domains() -> tuple[str, ...]:
    """Catalogs that at least one of OTHER_LANGUAGES ships (sorted)."""
    found = {p.stem for lang in OTHER_LANGUAGES for p in (LOCALE / lang / "LC_MESSAGES").glob("*.mo")}
    return tuple(sorted(found - _SKIP_DOMAINS))


@cache
def _english_pool() -> frozenset[str]:
    return frozenset(
        en.casefold() for lang in OTHER_LANGUAGES for d in domains() for en, _ in _catalog(lang, d)
    )


def _round_robin(per_domain: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """Up to `n` distinct strings, taking one from each domain in turn (each shuffled with `seed`)."""
    queues: list[Iterator[str]] = []
    for domain in sorted(per_domain):
        items = sorted(set(per_domain[domain]))
        random.Random(f"{seed}:{domain}").shuffle(items)
        queues.append(iter(items))
    out: dict[str, None] = {}
    while queues and len(out) < n:
        alive = []
        for q in queues:
            if (item := next(q, None)) is not None:
                out.setdefault(item)
                alive.append(q)
            if len(out) >= n:
                break
        queues = alive
    return list(out)


@cache
def _translation_pool() -> frozenset[str]:
    """Every translation of the catalogs (case-folded), of both splits."""
    return frozenset(
        t.casefold() for lang in OTHER_LANGUAGES for d in domains() for _, t in _catalog(lang, d) if t
    )


def _msgids(domain: str, split: str | None) -> set[str]:
    """The msgids of `domain` (of `split`; of both when None)."""
    pairs = (pair for lang in OTHER_LANGUAGES for pair in _catalog(lang, domain))
    return {en for en, _ in pairs if split in (None, split_of(en))}


def _ambiguous_english(text: str) -> bool:
    return text.casefold() in _translation_pool()


def english(split: str, per_language: int = 1500, seed: int = 0, kind: Kind = "unambiguous") -> list[str]:
    per_domain = {d: of_kind(_msgids(d, split), _ambiguous_english, kind) for d in domains()}
    return _round_robin(per_domain, per_language, seed)


@cache
def _english_words() -> dict[str, int]:
    """The words the unambiguous msgids of both splits write (`language_eval.english_words`), ISO 3166-2's
    native names left out."""
    msgids = (en for d in domains() if d not in _NATIVE_NAMES for en in _msgids(d, None))
    return english_words(en for en in msgids if not _ambiguous_english(en))


def others(
    split: str, per_language: int = 500, seed: int = 0, kind: Kind = "unambiguous"
) -> dict[str, list[str]]:
    """Per language: translations of `split`'s msgids that are not English strings themselves, of `kind`
    (module docstring)."""
    msgids, words = _english_pool(), _english_words()

    def pool(lang: str, domain: str) -> set[str]:
        pairs = _catalog(lang, domain)
        return {t for en, t in pairs if t and split_of(en) == split and t.casefold() not in msgids}

    def ambiguous(text: str) -> bool:
        return written_in_english(text, words)

    return {
        lang: _round_robin(
            {d: of_kind(pool(lang, d), ambiguous, kind) for d in domains()}, per_language, seed
        )
        for lang in OTHER_LANGUAGES
    }
