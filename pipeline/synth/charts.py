"""Charts (bar, line, pie, scatter) from random but plausible data, drawn with matplotlib. The caption is
the title, the axis names and the data as a markdown table; every value is written on the chart."""

from __future__ import annotations

import random

from PIL import Image

from .common import (
    ADJECTIVES,
    CITIES,
    MONTHS,
    NOUNS,
    QUARTERS,
    REGIONS,
    TEAMS,
    png_bytes,
    sample_rng,
    title_case,
)
from .markdown import markdown_table
from .shards import Sample

CHART_TYPES = ("bar", "line", "pie", "scatter")
WIDTH, HEIGHT, DPI = 800, 600, 100
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#ff7f0e", "#333333")
PIE_COLOURS = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d")
LABEL_BOX = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"}  # the line never crosses a value
UNITS = ("", " (k$)", " (units)", " (%)", " (millions)", " (tons)")


def _categories(rng: random.Random) -> tuple[str, list[str]]:
    axis, pool = rng.choice(
        [
            ("Month", MONTHS),
            ("Quarter", list(QUARTERS)),
            ("Region", list(REGIONS)),
            ("Team", list(TEAMS)),
            ("City", CITIES),
        ]
    )
    k = rng.randint(3, min(7, len(pool)))
    if axis in ("Month", "Quarter"):  # in order, as a time axis
        start = rng.randint(0, len(pool) - k)
        return axis, list(pool[start : start + k])
    return axis, rng.sample(list(pool), k)


def _value(rng: random.Random, decimals: int, lo: float, hi: float) -> str:
    return f"{rng.uniform(lo, hi):.{decimals}f}" if decimals else str(rng.randint(int(lo), int(hi)))


def _figure(rng: random.Random):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    fig.patch.set_facecolor(rng.choice(("white", "white", "#f7f7f2", "#f2f6fa")))
    return fig


def generate(seed: int, index: int) -> Sample:
    """Chart `index` of the stream `seed`."""
    import matplotlib

    rng = sample_rng("charts", seed, index)
    chart = CHART_TYPES[index % len(CHART_TYPES)] if rng.random() < 0.5 else rng.choice(CHART_TYPES)
    family = rng.choice(("DejaVu Sans", "DejaVu Serif"))
    size = rng.choice((12, 13, 14))
    noun = rng.choice(NOUNS)
    y_name = title_case([noun]) + rng.choice(UNITS)
    with matplotlib.rc_context({"font.family": family, "font.size": size}):
        fig = _figure(rng)
        ax = fig.add_subplot()
        if chart == "scatter":
            x_name = title_case([rng.choice(NOUNS)])
            while x_name.lower() == noun:
                x_name = title_case([rng.choice(NOUNS)])
            k = rng.randint(4, 7)
            xs = sorted(rng.sample(range(5, 96), k))
            ys = [rng.randint(5, 95) for _ in xs]
            header, rows = [x_name, y_name], [[str(x), str(y)] for x, y in zip(xs, ys, strict=True)]
            ax.scatter(xs, ys, color=rng.choice(COLOURS), s=30)
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(
                    f"({x}, {y})",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    bbox=LABEL_BOX,
                )
            ax.set_xlim(0, 105)
            ax.set_ylim(0, 110)
            title = f"{y_name.split(' (')[0]} vs {x_name.lower()}"
        else:
            x_name, cats = _categories(rng)
            decimals = rng.choice((0, 0, 1))
            if chart == "pie":
                cuts = sorted(rng.sample(range(5, 96), len(cats) - 1))
                shares = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
                while min(shares) < 4:  # slices too thin to label
                    cuts = sorted(rng.sample(range(5, 96), len(cats) - 1))
                    shares = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
                vals = [str(s) for s in shares]
                y_name = "Share (%)"
                wedges, _ = ax.pie(
                    shares,
                    colors=PIE_COLOURS[: len(cats)],
                    startangle=rng.choice((0, 90)),
                    counterclock=False,
                    wedgeprops={"edgecolor": "white"},
                )
                # labels in a legend beside the pie: OCR reads them as lines, not scattered around wedges
                ax.legend(
                    wedges,
                    [f"{c} {s}%" for c, s in zip(cats, shares, strict=True)],
                    frameon=False,
                    loc="center left",
                    bbox_to_anchor=(1.0, 0.5),
                    handlelength=1.0,
                )
                ax.set_aspect("equal")
                title = f"{title_case([noun])} by {x_name.lower()}"
            else:
                vals = [_value(rng, decimals, 10, 99 if decimals else 999) for _ in cats]
                nums = [float(v) for v in vals]
                colour = rng.choice(COLOURS)
                if chart == "bar":
                    bars = ax.bar(cats, nums, color=colour, width=rng.uniform(0.5, 0.8))
                    ax.bar_label(bars, labels=vals, padding=3)
                else:
                    ax.plot(cats, nums, color=colour, marker="o", linewidth=2)
                    for c, v, y in zip(cats, vals, nums, strict=True):
                        ax.annotate(
                            v,
                            (c, y),
                            textcoords="offset points",
                            xytext=(0, 9),
                            ha="center",
                            bbox=LABEL_BOX,
                            zorder=5,
                        )
                ax.set_ylim(0, max(nums) * 1.18)
                ax.margins(x=0.1)
                if rng.random() < 0.5:
                    ax.grid(axis="y", alpha=0.3)
                title = title_case([rng.choice(ADJECTIVES), noun]) + f" by {x_name.lower()}"
            header, rows = [x_name, y_name], [[c, v] for c, v in zip(cats, vals, strict=True)]
        if chart != "pie":
            ax.set_xlabel(x_name)
            ax.set_ylabel(y_name)
            for side in ("top", "right"):
                ax.spines[side].set_visible(rng.random() < 0.3)
        ax.set_title(title)
        # random margins move the plot around the canvas (charts of one type would otherwise share a
        # layout, and a perceptual hash); cheaper than tight_layout, which draws the figure twice
        fig.subplots_adjust(
            left=rng.uniform(0.11, 0.2),
            bottom=rng.uniform(0.11, 0.2),
            top=rng.uniform(0.84, 0.92),
            right=rng.uniform(0.55, 0.65) if chart == "pie" else rng.uniform(0.8, 0.97),
        )
        image = _pixels(fig)
    if chart == "pie":
        caption = f"{title}\n\n{markdown_table(header, rows)}"
    else:
        caption = f"{title}\nx axis: {x_name}; y axis: {y_name}\n\n{markdown_table(header, rows)}"
    structure = {
        "chart": chart,
        "title": title,
        "x_axis": x_name,
        "y_axis": y_name,
        "header": header,
        "rows": rows,
    }
    return Sample(png_bytes(image), caption, structure)


def _pixels(fig) -> Image.Image:
    """The figure drawn by Agg as an RGB image (matplotlib's own PNG would carry alpha and be re-encoded)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
