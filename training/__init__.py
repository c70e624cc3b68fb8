"""vlmforge training: the fusion model, its tasks and the DeepSpeed loop (docs/architecture.md)."""
