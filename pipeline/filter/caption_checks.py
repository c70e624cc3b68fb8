"""Caption heuristics: empty, length bounds, boilerplate, URL/e-mail only, symbol ratio, repeated words."""

from __future__ import annotations

import re

import pyarrow as pa

from vlmforge.pipeline.config import CaptionConfig
from vlmforge.pipeline.filter.base import Stage, Verdict
from vlmforge.pipeline.filter.text import normalize_whitespace

_URL_OR_EMAIL = re.compile(
    r"(?:(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+|[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|io|co|de|uk)\S*)",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)
_BLANK_RUNS = re.compile(r"\n{3,}")
# Substrings one of which every match of _URL_OR_EMAIL contains (lower case): most captions have none, and
# the regex is the costliest check, so it runs only on the others.
_URL_MARKERS = ("://", "@", "www.", ".com", ".org", ".net", ".io", ".co", ".de", ".uk")


def strip_urls(caption: str) -> str:
    """`caption` with URLs, e-mail addresses and bare domains replaced by spaces."""
    lower = caption.lower()
    if not any(m in lower for m in _URL_MARKERS):
        return caption
    return _URL_OR_EMAIL.sub(" ", caption)


def keep_lines(caption: str) -> str:
    """Whitespace normalised within each line, runs of blank lines made one, the ends stripped; line breaks
    kept (a markdown table's rows, the blank line before it)."""
    text = "\n".join(normalize_whitespace(raw) for raw in caption.splitlines())
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


class CaptionChecks(Stage):
    """Rejects captions no model should learn from; sets `caption` to its whitespace-normalised form."""

    name = "caption"

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.boilerplate = re.compile("|".join(f"(?:{p})" for p in cfg.boilerplate_patterns), re.IGNORECASE)
        self.boilerplate_words = frozenset(w.lower() for w in cfg.boilerplate_words)

    def is_boilerplate(self, caption: str) -> bool:
        """A file name, a camera default name, or only stock words like 'click here', 'image 3'."""
        if self.boilerplate.fullmatch(caption.strip(" .!?:;-_\"'")):
            return True
        tokens = _WORD.findall(caption.lower())
        words = [t for t in tokens if not t.isdigit()]
        return bool(words) and all(w in self.boilerplate_words for w in words)

    def check(self, caption: str) -> tuple[str | None, str | None]:
        """Return (reason, detail) for a whitespace-normalised caption, or (None, None) to keep it."""
        cfg = self.cfg
        if not caption:
            return "empty_caption", None
        words = caption.split()
        if len(caption) < cfg.min_chars or len(words) < cfg.min_words:
            return "too_short", f"{len(caption)} chars, {len(words)} words"
        if len(caption) > cfg.max_chars or len(words) > cfg.max_words:
            return "too_long", f"{len(caption)} chars, {len(words)} words"
        if self.is_boilerplate(caption):
            return "boilerplate", caption[:60]
        if not strip_urls(caption).strip(" ,;:|-/"):
            return "url_or_email_only", caption[:60]
        # letters/digits and whitespace are disjoint classes; map() keeps the per-character loop in C
        symbols = len(caption) - sum(map(str.isalnum, caption)) - sum(map(str.isspace, caption))
        if symbols / len(caption) > cfg.max_symbol_ratio:
            return "symbol_ratio", f"{symbols / len(caption):.2f}"
        tokens = [w.lower() for w in _WORD.findall(caption)]
        if len(tokens) >= 4:
            repeated = 1 - len(set(tokens)) / len(tokens)
            if repeated > cfg.max_repeated_word_ratio:
                return "repeated_words", f"{repeated:.2f}"
        return None, None

    def decide(self, batch: pa.Table) -> Verdict:
        originals = batch.column("caption").to_pylist()
        if self.cfg.keep_newlines:
            cleaned = [keep_lines(c or "") for c in originals]
        else:
            cleaned = [normalize_whitespace(c or "") for c in originals]
        results = [self.check(c) for c in cleaned]
        return Verdict(
            reasons=[r for r, _ in results],
            details=[d for _, d in results],
            columns={
                "original_caption": pa.array(originals, pa.string()),
                "caption": pa.array(cleaned, pa.string()),
                "caption_words": pa.array([len(c.split()) for c in cleaned], pa.int32()),
            },
        )
