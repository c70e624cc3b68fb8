"""What the kinds share: the per-sample random stream, PNG encoding, fonts and an English vocabulary."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf")
BOLD = {
    "DejaVuSans.ttf": "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf": "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf": "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed.ttf": "DejaVuSansCondensed-Bold.ttf",
}

CITIES = (
    "London Paris Berlin Madrid Rome Vienna Prague Dublin Oslo Lisbon Athens Warsaw Boston Chicago Denver "
    "Seattle Houston Toronto Sydney Tokyo Cairo Lagos Lima Quito Delhi Mumbai Dallas Austin Phoenix"
).split()
PRODUCTS = (
    "apples pears plums grapes lemons melons cherries peaches oranges bananas carrots onions potatoes "
    "tomatoes beans rice bread cheese butter coffee tea milk honey sugar flour salt pepper"
).split()
NAMES = (
    "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Laura Mike Nancy Oliver Peter Rachel "
    "Sarah Thomas Victor Walter Helen Julia Kevin Linda Mary Paul Susan"
).split()
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
QUARTERS = ("Q1", "Q2", "Q3", "Q4")
REGIONS = ("North", "South", "East", "West", "Central")
TEAMS = ("Sales", "Support", "Finance", "Research", "Design", "Legal", "Marketing", "Operations")
NOUNS = (
    "revenue sales profit cost visitors orders users downloads rainfall temperature output income "
    "budget growth traffic energy demand price volume score"
).split()
ADJECTIVES = ("monthly annual weekly quarterly total average daily regional online local new").split()
WORDS = (
    "about account address answer apply board book building call change check city class close "
    "community company contact country course data date design details email event family field form "
    "garden group guide health help history home hotel house information issue item job kitchen "
    "language learn library list local member message money music name news number office order page "
    "park people phone picture place plan price product program project question reading report "
    "result room school search service share shop site space sport story student study subject "
    "support system team time today travel update value video water week world year"
).split()


def sample_rng(kind: str, seed: int, index: int) -> random.Random:
    """The random stream of one sample: it depends on nothing but (kind, seed, index)."""
    return random.Random(f"vlmforge-synth:{kind}:{seed}:{index}")


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG (text stays sharp for OCR); no metadata, so the bytes depend only on the pixels."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def font_path(name: str) -> str:
    """A DejaVu font file (Debian's fonts-dejavu-core, which the OCR stage already needs)."""
    return str(FONT_DIR / name)


def title_case(words: list[str]) -> str:
    """`monthly revenue` -> `Monthly revenue`."""
    text = " ".join(words)
    return text[:1].upper() + text[1:]
