"""vlmforge curation: Ray Data phases over Arrow batches of image-text pairs (docs/architecture.md)."""
