"""Short-caption language ID on real text: English kept and non-English dropped, per rule and set, and the
language stage's captions/s per rule on the same captions.

    .venv/bin/python benchmarks/language_short.py [--sets cldr gettext-dev gettext-test] [--show-kept]

Sets (1,500 English captions, 500 in each of 13 other languages; non-English dropped is the mean over them).
Since session 11 an English caption that one of the 13 languages also writes so (case-folded: ``taxi``,
``Namibia``, untranslated gettext strings) is *ambiguous*: left out of both sides, its keep rate reported
apart ("ambiguous kept", up to 1,500 of them), next to English kept on the sets before (ambiguous included).
Since session 13 the same holds the other way: a non-English caption every word of which the English source
writes (French ``air``, ``sport``; gettext ``script Perl``) is ambiguous, its drop rate reported apart
(all of them, mean over languages), next to non-English dropped on the sets before:
- `cldr`: `vlmforge.pipeline.filter.language_eval` (Debian's unicode-cldr-core: emoji names and keywords,
  territory and city names); the rules before issue 27's word rule were tuned on it;
- `gettext-dev` / `gettext-test`: `vlmforge.pipeline.filter.language_gettext` (UI strings and ISO names of
  the packages' gettext catalogs); the word rule was developed on dev and is reported on test.
Rules: fastText's argmax alone (keep iff its top-1 is English), the rule before issue 27 (`common_zipf: 0`,
`names: false`, `short_words: false`), the opt-in lexicon rules (`common_zipf: 3`, `names: true`), the word
rule without its rare-word and unknown-word parts (session 9), the default of session 10 (capitalised words
up to `common_margin` commoner in a rival read as names: `name_margin: 2`; no `jargon_words`), the default of
session 11 (a lone letter between two words skipped) and the default `LanguageConfig`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import wordfreq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.pipeline.config import LanguageConfig  # noqa: E402
from vlmforge.pipeline.filter import language_eval, language_gettext  # noqa: E402
from vlmforge.pipeline.filter.language_id import LanguageId  # noqa: E402

BEFORE = {"common_zipf": 0, "names": False, "short_words": False}
SESSION_11 = {"letter_words": False}
SESSION_10 = {**SESSION_11, "name_margin": 2.0, "jargon_words": False}
RULES = {
    "before (lexicon only)": BEFORE,
    "opt-in (common_zipf 3, names on)": {**BEFORE, "common_zipf": 3.0, "names": True},
    "word rule of session 9 (rare_zipf 0, unknown_word_rejects off)": {
        "rare_zipf": 0, "unknown_word_rejects": False, **SESSION_10
    },
    "default of session 10 (name_margin 2, jargon_words off)": SESSION_10,
    "default of session 11 (letter_words off)": SESSION_11,
    "default LanguageConfig": {},
}


KINDS = ("unambiguous", "ambiguous", "all")


def load(name: str) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """({kind: English captions}, {kind: {language: captions}}) for the three kinds; every ambiguous
    non-English caption, not 500 per language."""
    n = {"unambiguous": 500, "ambiguous": 10**9, "all": 500}
    if name == "cldr":
        others = {k: language_eval.others(per_language=n[k], kind=k) for k in KINDS}
        return {k: language_eval.english(kind=k) for k in KINDS}, others
    split = name.removeprefix("gettext-")
    others = {k: language_gettext.others(split, per_language=n[k], kind=k) for k in KINDS}
    return {k: language_gettext.english(split, kind=k) for k in KINDS}, others


def keeps_caption(judge, caption: str, top) -> bool:
    """Whether `judge` (a LanguageId's `judge_one`) keeps `caption`, given its fastText top predictions."""
    return judge(caption, len(caption.split()), top)[2] is None


def table(name: str, english: dict[str, list[str]], others_of: dict[str, dict[str, list[str]]]) -> None:
    stage = LanguageId(LanguageConfig())
    others = others_of["unambiguous"]
    every = [*english.values(), *(v for o in others_of.values() for v in o.values())]
    captions = {t for v in every for t in v}
    tops = {t: stage.predict(t) for t in captions}
    keeps = {"fastText argmax": lambda t: tops[t][0][0] == "en"}
    for rule, overrides in RULES.items():
        judge = LanguageId(LanguageConfig(**overrides)).judge_one
        keeps[rule] = lambda t, judge=judge: keeps_caption(judge, t, tops[t])
    langs = list(others)
    n_amb = {lang: len(v) for lang, v in others_of["ambiguous"].items()}
    print(f"\n{name}: {len(english['unambiguous'])} English captions, {len(langs)} other languages x 500; "
          f"{len(english['ambiguous'])} ambiguous English captions apart; ambiguous non-English captions "
          f"apart: {sum(n_amb.values())} ({', '.join(f'{lang} {k}' for lang, k in n_amb.items())})\n")
    print("| rule | English kept | non-English dropped | " + " | ".join(langs)
          + " | ambiguous English kept | ambiguous non-English dropped | sets before (ambiguous included):"
          " English kept / non-English dropped |")
    print("|---|---:|---:|" + "---:|" * (len(langs) + 3))

    def dropped(captions: dict[str, list[str]], keep) -> float:  # mean over languages that have captions
        rates = [sum(not keep(t) for t in v) / len(v) for v in captions.values() if v]
        return sum(rates) / len(rates)

    for rule, keep in keeps.items():
        kept = {k: sum(map(keep, v)) / len(v) for k, v in english.items()}
        per = " | ".join(f"{dropped({lang: others[lang]}, keep):.3f}" for lang in langs)
        print(f"| {rule} | {kept['unambiguous']:.3f} | {dropped(others, keep):.3f} | {per} | "
              f"{kept['ambiguous']:.3f} | {dropped(others_of['ambiguous'], keep):.3f} | "
              f"{kept['all']:.3f} / {dropped(others_of['all'], keep):.3f} |")


def show_kept(name: str, others: dict[str, list[str]]) -> None:
    """The unambiguous non-English captions the default rule keeps: those made only of words English uses
    at Zipf >= 3 counted, the rest listed."""
    stage = LanguageId(LanguageConfig())
    still = [(lang, t) for lang, captions in others.items() for t in captions
             if keeps_caption(stage.judge_one, t, stage.predict(t))]
    rest = [(lang, t) for lang, t in still
            if not all(wordfreq.zipf_frequency(w, "en") >= 3 for w in t.lower().replace("-", " ").split())]
    print(f"\n{name}: {len(still)} non-English captions kept, {len(still) - len(rest)} of them only words "
          f"English uses at Zipf >= 3; the other {len(rest)}:\n")
    print("\n".join(f"- {lang}: {t}" for lang, t in rest))


def speed(captions: list[str], rounds: int = 3) -> None:
    """The stage's whole per-caption work (fastText, then the decision), each rule on the same captions:
    the fastest of `rounds` interleaved rounds (a shared machine's load shows less), after a warm-up pass
    of 200 captions per rule (the model and the lexicon tables load once per process, not timed here)."""
    print(f"\nlanguage stage, {len(captions):,} captions (fastText + decision), one process, "
          f"fastest of {rounds} rounds:\n")
    print("| rule | s | captions/s |\n|---|---:|---:|")
    stages = {rule: LanguageId(LanguageConfig(**overrides)) for rule, overrides in RULES.items()}
    best = dict.fromkeys(stages, float("inf"))
    for stage in stages.values():
        for t in captions[:200]:
            stage.judge_one(t, len(t.split()), stage.predict(t))
    for _ in range(rounds):
        for rule, stage in stages.items():
            start = time.perf_counter()
            for t in captions:
                stage.judge_one(t, len(t.split()), stage.predict(t))
            best[rule] = min(best[rule], time.perf_counter() - start)
    for rule, seconds in best.items():
        print(f"| {rule} | {seconds:.2f} | {len(captions) / seconds:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["cldr", "gettext-dev", "gettext-test"])
    parser.add_argument("--show-kept", action="store_true",
                        help="list the unambiguous non-English captions the default rule keeps")
    args = parser.parse_args()
    captions: list[str] = []
    for name in args.sets:
        english, others = load(name)
        table(name, english, others)
        if args.show_kept:
            show_kept(name, others["unambiguous"])
        captions += english["unambiguous"] + [t for v in others["unambiguous"].values() for t in v]
    speed(captions)


if __name__ == "__main__":
    main()
