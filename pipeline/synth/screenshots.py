"""Screenshots: random but valid HTML pages (headings, paragraphs, lists, forms, tables) rendered in headless
Chromium (Debian's `chromium`, driven by Playwright; no browser is downloaded). One element is marked with a
red box; the caption is the HTML that made it."""

from __future__ import annotations

import atexit
import html
import io
import os
import random
import shutil

from PIL import Image, ImageDraw

from .common import CITIES, NAMES, PRODUCTS, TEAMS, WORDS, png_bytes, sample_rng
from .shards import Sample

WIDTH, HEIGHT = 800, 600
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--font-render-hinting=none",
]
FONTS = ("DejaVu Sans", "DejaVu Serif", "Liberation Sans", "Liberation Serif", "DejaVu Sans Mono")
INPUT_TYPES = (
    ("text", "Name"),
    ("email", "Email"),
    ("password", "Password"),
    ("number", "Age"),
    ("date", "Date"),
    ("search", "Search"),
)
MARK = (230, 20, 20)


def chromium_path() -> str | None:
    """Debian's chromium: $CHROMIUM, /usr/bin/chromium, or `chromium` on the PATH."""
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def check_browser() -> None:
    """Fails with the command that fixes it when Playwright or Chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        raise ValueError("synth screenshots needs Playwright: pip install 'playwright==1.65.2'") from e
    if chromium_path() is None:
        raise ValueError(
            "synth screenshots needs Debian's chromium: apt-get install chromium "
            "(or set CHROMIUM to a Chromium binary)"
        )


# English function words joining the content words: a page of bare nouns reads as several languages
# (`question message date place` is as French as English).
LINKS = ("the", "and", "for", "with", "your", "our", "of the", "to the", "in the", "about", "from", "this")


def _words(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    for k in range(len(words) - 1, 0, -2):
        words.insert(k, rng.choice(LINKS))
    return " ".join(words)


def _sentence(rng: random.Random, lo: int = 4, hi: int = 12) -> str:
    text = _words(rng, lo, hi)
    return text[:1].upper() + text[1:] + "."


def _heading(rng: random.Random) -> str:
    level = rng.randint(1, 3)
    text = _words(rng, 2, 4)
    return f"<h{level}>{html.escape(text[:1].upper() + text[1:])}</h{level}>"


def _paragraph(rng: random.Random) -> str:
    return f"<p>{' '.join(_sentence(rng) for _ in range(rng.randint(1, 2)))}</p>"


def _list(rng: random.Random) -> str:
    tag = rng.choice(("ul", "ol"))
    n = rng.randint(2, 5)
    kind = rng.random()
    if kind < 0.3:
        items = [f"{rng.randint(1, 12)} {p}" for p in rng.sample(PRODUCTS, n)]
    elif kind < 0.5:
        items = [f"{c}, {rng.choice(TEAMS).lower()} office" for c in rng.sample(CITIES, n)]
    else:
        items = [_words(rng, 1, 3) for _ in range(n)]
    return f"<{tag}>{''.join(f'<li>{html.escape(w)}</li>' for w in items)}</{tag}>"


def _form(rng: random.Random) -> str:
    fields = []
    for kind, label in rng.sample(INPUT_TYPES, rng.randint(1, 3)):
        word = rng.choice(WORDS)
        label = rng.choice((f"{label}", f"Your {label.lower()}", f"{word.capitalize()} {label.lower()}"))
        name = label.lower().replace(" ", "_")
        hint = f' placeholder="{html.escape(_words(rng, 1, 2))}"' if rng.random() < 0.5 else ""
        fields.append(f'<label>{label} <input type="{kind}" name="{name}"{hint}></label>')
    button = rng.choice(("Submit", "Send", "Search", "Sign in", "Save", "Continue")) + rng.choice(
        ("", f" {rng.choice(WORDS)}", " now")
    )
    return f'<form>{"".join(fields)}<button type="submit">{button}</button></form>'


def _table(rng: random.Random) -> str:
    cols = rng.sample([("Name", NAMES), ("City", CITIES), ("Item", PRODUCTS), ("Team", TEAMS)], 2)
    rows = rng.randint(2, 3)
    head = "".join(f"<th>{c}</th>" for c, _ in cols) + "<th>Count</th>"
    body = "".join(
        "<tr>"
        + "".join(f"<td>{rng.choice(pool)}</td>" for _, pool in cols)
        + f"<td>{rng.randint(1, 999)}</td></tr>"
        for _ in range(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


BLOCKS = {"heading": _heading, "paragraph": _paragraph, "list": _list, "form": _form, "table": _table}


def make_page(rng: random.Random) -> tuple[str, list[str]]:
    """A page of 3-6 blocks (a heading first); returns the document and the blocks' HTML."""
    blocks = [_heading(rng)]
    for _ in range(rng.randint(2, 5)):
        blocks.append(BLOCKS[rng.choice(list(BLOCKS))](rng))
    font, size = rng.choice(FONTS), rng.randint(14, 17)
    bg, fg = rng.choice(
        (("#ffffff", "#222222"), ("#f7f7f2", "#1a1a1a"), ("#eef3f8", "#10202f"), ("#fffaf0", "#302010"))
    )
    accent = rng.choice(("#1f5fa8", "#2d7a3a", "#8a2a5a", "#444444"))
    style = (
        f"body{{margin:{rng.randint(12, 32)}px;font-family:'{font}';font-size:{size}px;"
        f"background:{bg};color:{fg}}}"
        f"h1,h2,h3{{color:{accent};margin:8px 0}}p{{margin:6px 0;max-width:{rng.randint(520, 720)}px}}"
        "ul,ol{margin:6px 0}table{border-collapse:collapse;margin:6px 0}"
        "th,td{border:1px solid #999;padding:3px 8px}form{margin:6px 0}"
        f"label{{margin-right:10px}}input{{margin-left:4px;width:{rng.randint(90, 150)}px}}"
    )
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><style>{style}</style></head>'
        f"<body>{''.join(blocks)}</body></html>"
    )
    return doc, blocks


class _Browser:
    """One headless Chromium page per process, started on first use and closed at exit."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        check_browser()
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=1)
        atexit.register(self.close)

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()


_BROWSER: _Browser | None = None


def _page():
    global _BROWSER
    if _BROWSER is None:
        _BROWSER = _Browser()
    return _BROWSER.page


def generate(seed: int, index: int) -> Sample:
    """Screenshot `index` of the stream `seed`."""
    rng = sample_rng("screenshots", seed, index)
    doc, blocks = make_page(rng)
    page = _page()
    page.set_content(doc, wait_until="load")
    boxes = page.evaluate(
        "() => Array.from(document.body.children).map(e => {const r = e.getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom];})"
    )
    visible = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x1 <= WIDTH and y1 <= HEIGHT and y1 > y0]
    pick = rng.choice(visible or [0])
    image = Image.open(io.BytesIO(page.screenshot(type="png"))).convert("RGB")
    x0, y0, x1, y1 = boxes[pick]
    box = [
        max(0, round(x0) - 3),
        max(0, round(y0) - 3),
        min(WIDTH - 1, round(x1) + 2),
        min(HEIGHT - 1, round(y1) + 2),
    ]
    ImageDraw.Draw(image).rectangle(box, outline=MARK, width=2)
    structure = {
        "html": doc,
        "element": pick,
        "tag": blocks[pick].split(">", 1)[0].lstrip("<").split()[0],
        "box": box,
        "box_norm": [
            round(box[0] / WIDTH, 3),
            round(box[1] / HEIGHT, 3),
            round(box[2] / WIDTH, 3),
            round(box[3] / HEIGHT, 3),
        ],
    }
    return Sample(png_bytes(image), blocks[pick], structure)
