"""vlmforge curation pipeline: Ray Data stages over Arrow batches of image-text pairs."""

__version__ = "0.1.0"
