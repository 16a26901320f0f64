"""Sentence embeddings: `model` (mean pooling + L2 norm over a transformers encoder), `batcher` (dynamic
batching of concurrent requests into forward passes) and `config` (EmbeddingConfig, stdlib only)."""
