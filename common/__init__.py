"""Pieces both wings use: errors, atomic files, YAML configs, the version. Imports nothing of either."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlmforge")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
