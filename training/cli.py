"""Training subcommands of `vlmforge`, registered into the main parser by pipeline/cli.py."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training subcommands to `sub` (each sets `handler`)."""
