"""Benchmarks: `yaie bench serve` (a load generator for any OpenAI-compatible server) and `yaie bench offline`
(our engine's offline throughput against a naive per-request transformers loop).

Module map: `prompts` (random token-id / word prompts of exact lengths), `stats` (vLLM-compatible metric
definitions, pure), `sse` (SSE decoding and chunk interpretation, pure), `serve` (the asyncio load generator),
`offline` + `baseline` (offline throughput), `report` (tables and JSON), `cli` (argparse wiring).
"""
