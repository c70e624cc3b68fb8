"""Short-caption language ID on real text: English kept and non-English dropped, per rule, on the CLDR set.

    .venv/bin/python benchmarks/language_short.py

The set is `vlmforge.pipeline.filter.language_eval` (Debian's unicode-cldr-core: emoji names and keywords,
territory and city names; 1,500 English captions, 500 in each of 13 other languages). Rules: fastText's
argmax alone (keep iff its top-1 is English), the rule before issue 27 (`common_zipf: 0`, `names: false`),
and the default `LanguageConfig`. Non-English dropped is the mean over the 13 languages.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.pipeline.config import LanguageConfig  # noqa: E402
from vlmforge.pipeline.filter import language_eval  # noqa: E402
from vlmforge.pipeline.filter.language_id import LanguageId  # noqa: E402


def main() -> None:
    english, others = language_eval.english(), language_eval.others()
    stage = LanguageId(LanguageConfig())
    tops = {t: stage.predict(t) for t in {*english, *(t for v in others.values() for t in v)}}
    def judged(rule: LanguageId):
        return lambda t: rule.judge_one(t, len(t.split()), tops[t])[2] is None

    rules = {
        "fastText argmax": lambda t: tops[t][0][0] == "en",
        "default (common_zipf 0, names off)": judged(LanguageId(LanguageConfig(common_zipf=0, names=False))),
        "opt-in (common_zipf 3, names on)": judged(LanguageId(LanguageConfig(common_zipf=3.0, names=True))),
    }
    langs = list(others)
    print(f"{len(english)} English captions, {len(langs)} other languages x 500\n")
    print("| rule | English kept | non-English dropped | " + " | ".join(langs) + " | s |")
    print("|---|---:|---:|" + "---:|" * len(langs) + "---:|")
    for name, keep in rules.items():
        start = time.perf_counter()
        kept = sum(map(keep, english))
        dropped = {lang: sum(not keep(t) for t in v) / len(v) for lang, v in others.items()}
        seconds = time.perf_counter() - start
        mean = sum(dropped.values()) / len(dropped)
        per = " | ".join(f"{dropped[lang]:.3f}" for lang in langs)
        print(f"| {name} | {kept / len(english):.3f} | {mean:.3f} | {per} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
