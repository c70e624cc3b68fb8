"""Legibility check of rendered structured images: the share of a table's or chart's cell values (a
flowchart's node labels) that tesseract (the OCR stage's engine) reads back from the image at its generated
size."""

from __future__ import annotations

import io
import re

from PIL import Image

_STRIP = "()[]{},;:|%$*\"'`"
_PSM_SPARSE = 11  # charts: text scattered over the image, no reading order to assume


def _tokens(text: str) -> list[str]:
    return [t for t in (w.strip(_STRIP).rstrip(".") for w in re.split(r"[\s,]+", text)) if t]


def ocr_text(image: bytes, psm: int = _PSM_SPARSE) -> str:
    """Tesseract's text of an encoded image: in-process tesserocr where usable, else the tesseract binary."""
    from vlmforge.pipeline.enrich.ocr import tessdata_dir, tesserocr_usable

    grey = Image.open(io.BytesIO(image)).convert("L")
    if tesserocr_usable():
        import tesserocr

        with tesserocr.PyTessBaseAPI(path=tessdata_dir(), lang="eng", psm=psm) as api:
            api.SetImage(grey)
            return api.GetUTF8Text()
    import pytesseract

    return pytesseract.image_to_string(grey, lang="eng", config=f"--psm {psm}")


def text_values(structure: dict) -> list[str]:
    """What a rendering must show legibly: a table's or chart's cell values, a flowchart's node labels."""
    if "nodes" in structure:
        return [node["label"] for node in structure["nodes"]]
    return [cell for row in structure["rows"] for cell in row]


def recovered(values: list[str], text: str) -> list[bool]:
    """Per value: whether every token of it occurs among the OCR text's tokens (case-insensitive)."""
    seen = {t.lower() for t in _tokens(text)}
    return [all(t.lower() in seen for t in _tokens(v)) for v in values]


def cell_recall(image: bytes, values: list[str], psm: int = _PSM_SPARSE) -> float:
    """Share of `values` recovered by OCR of `image` (1.0 for no values)."""
    if not values:
        return 1.0
    hits = recovered(values, ocr_text(image, psm))
    return sum(hits) / len(hits)
