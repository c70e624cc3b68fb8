"""Equations from a small random grammar, rendered with matplotlib's mathtext; the caption is the LaTeX."""

from __future__ import annotations

import random

from PIL import Image

from .common import png_bytes, sample_rng
from .shards import Sample

WIDTH, HEIGHT, DPI = 640, 240, 100
VARS = list("xyzabcnkt")
GREEK = [r"\alpha", r"\beta", r"\gamma", r"\theta", r"\lambda", r"\mu", r"\sigma", r"\omega", r"\phi"]
FUNCS = [r"\sin", r"\cos", r"\log", r"\exp", r"\tan"]
RELS = ["=", r"\leq", r"\geq", "<", ">", r"\neq", r"\approx"]
OPS = ["+", "-", r"\cdot", r"\times"]
FONTSETS = ("dejavusans", "dejavuserif", "cm", "stix", "stixsans")


def _atom(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return rng.choice(VARS)
    if r < 0.7:
        return str(rng.randint(1, 99))
    return rng.choice(GREEK)


def _term(rng: random.Random, depth: int) -> str:
    """One term: an atom, a power, an index, a fraction, a root, a function, a sum or an integral."""
    r = rng.random() if depth < 2 else rng.random() * 0.45
    if r < 0.15:
        return _atom(rng)
    if r < 0.3:
        return f"{_atom(rng)}^{{{_atom(rng)}}}"
    if r < 0.45:
        return f"{rng.choice(VARS)}_{{{rng.choice(['i', 'j', 'n', '0', '1', 'k'])}}}"
    if r < 0.6:
        return rf"\frac{{{_expr(rng, depth + 1, 2)}}}{{{_expr(rng, depth + 1, 2)}}}"
    if r < 0.7:
        return rf"\sqrt{{{_expr(rng, depth + 1, 2)}}}"
    if r < 0.8:
        return rf"{rng.choice(FUNCS)}({_expr(rng, depth + 1, 2)})"
    if r < 0.9:
        i = rng.choice(["i", "k", "j"])
        return rf"\sum_{{{i}=1}}^{{{rng.choice(['n', 'N', '10', 'm'])}}} {_term(rng, depth + 1)}"
    lo, hi = rng.choice([("0", "1"), ("0", r"\infty"), ("a", "b"), ("-1", "1"), ("0", r"\pi")])
    v = rng.choice(["x", "t", "u"])
    return rf"\int_{{{lo}}}^{{{hi}}} {_term(rng, depth + 1)} \, d{v}"


def _expr(rng: random.Random, depth: int, max_terms: int) -> str:
    terms = [_term(rng, depth) for _ in range(rng.randint(1, max_terms))]
    out = terms[0]
    for t in terms[1:]:
        out += f" {rng.choice(OPS)} {t}"
    return out


def make_latex(rng: random.Random) -> str:
    """A random equation or inequality in the LaTeX subset mathtext renders."""
    return f"{_expr(rng, 0, 3)} {rng.choice(RELS)} {_expr(rng, 0, 2)}"


def generate(seed: int, index: int) -> Sample:
    """Equation `index` of the stream `seed`."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = sample_rng("equations", seed, index)
    latex = make_latex(rng)
    fontset = rng.choice(FONTSETS)
    size = rng.randint(18, 30)
    with matplotlib.rc_context({"mathtext.fontset": fontset}):
        fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
        fig.patch.set_facecolor(rng.choice(("white", "white", "#fbfaf5", "#f4f7fb")))
        canvas = FigureCanvasAgg(fig)
        text = fig.text(
            0.5,
            0.5,
            f"${latex}$",
            fontsize=size,
            ha="center",
            va="center",
            color=rng.choice(("black", "#202040", "#402020")),
        )
        renderer = canvas.get_renderer()
        box = text.get_window_extent(renderer)
        scale = min(1.0, 0.92 * WIDTH / box.width, 0.9 * HEIGHT / box.height)
        if scale < 1.0:  # shrink a long equation to fit the canvas
            text.set_fontsize(size * scale)
            size = round(size * scale, 1)
        # anywhere it fits: short equations in one spot would share a perceptual hash
        w, h = min(1.0, box.width * scale / WIDTH), min(1.0, box.height * scale / HEIGHT)
        text.set_position(
            (
                rng.uniform(0.04 + w / 2, 0.96 - w / 2) if w < 0.92 else 0.5,
                rng.uniform(0.05 + h / 2, 0.95 - h / 2) if h < 0.9 else 0.5,
            )
        )
        canvas.draw()
        image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    return Sample(png_bytes(image), latex, {"latex": latex, "fontset": fontset, "fontsize": size})
