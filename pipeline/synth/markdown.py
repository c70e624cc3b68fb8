"""Markdown tables, the structured form of charts and tables."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (cells must hold no `|` or newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cell_values(rows: list[list[str]]) -> list[str]:
    """Every body cell, row by row (what a legibility check must read back)."""
    return [c for row in rows for c in row]
