"""Text normalisation shared by the caption checks and the duplicate keys."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+", re.UNICODE)
_NOT_WORD = re.compile(r"[^\w\s]+", re.UNICODE)


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (newlines included) into one space and strip the ends."""
    return _WS.sub(" ", text).strip()


def normalize_for_dedup(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of a caption (NFKC, casefolded)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return normalize_whitespace(_NOT_WORD.sub(" ", text).replace("_", " "))


def caption_key(text: str) -> str:
    """Exact-duplicate key of a caption: a hash of its normalised form."""
    return hashlib.blake2b(normalize_for_dedup(text).encode(), digest_size=12).hexdigest()
