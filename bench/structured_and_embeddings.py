"""Two in-process benchmarks for issue 6, on the default models:

1. Constrained decoding overhead: 16 concurrent requests, each generating exactly --max-tokens tokens, free
   text (ignore_eos) vs a JSON-schema constraint whose output is longer than --max-tokens (so every request
   runs to the same length). Reports output tokens/s of each and their ratio (target >= 0.90).
2. Embedding throughput: --concurrency clients each embedding --requests-per-client single sentences back to
   back through the DynamicBatcher, with max_batch_size 64 vs 1 (one request per forward pass).
   Reports requests/s of each and the speed-up (target >= 4x), and the mean batch size.

    .venv/bin/python bench/structured_and_embeddings.py [--skip-structured] [--skip-embeddings]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

JSON_LIST_SCHEMA = {"type": "array", "minItems": 200, "maxItems": 200,
                    "items": {"type": "integer", "minimum": 0, "maximum": 999}}


def bench_structured(num_requests: int, max_tokens: int, num_rounds: int) -> None:
    from yaie.engine.offline import LLM
    from yaie.types import SamplingParams, StructuredSpec

    llm = LLM(None, max_model_len=1024, max_num_seqs=num_requests)
    prompts = [llm.engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"List {200 + i} numbers."}], add_generation_prompt=True, tokenize=False)
        for i in range(num_requests)]
    spec = StructuredSpec("json_schema", json.dumps(JSON_LIST_SCHEMA))
    setups = {"free text": SamplingParams(temperature=0.8, seed=1, max_tokens=max_tokens, ignore_eos=True),
              "json_schema": SamplingParams(temperature=0.8, seed=1, max_tokens=max_tokens, structured=spec)}
    llm.generate(prompts[:2], setups["json_schema"], use_tqdm=False)  # warm up: compile, first masks
    rates: dict[str, float] = {}
    for _ in range(num_rounds):  # alternate, keep each setup's best round (the machine is shared)
        for name, params in setups.items():
            started = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            num_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            rates[name] = max(rates.get(name, 0.0), num_tokens / elapsed)
            print(f"  {name:12s} {num_tokens} tokens in {elapsed:.2f}s = {num_tokens / elapsed:.1f} tok/s")
    print(f"structured: free text {rates['free text']:.1f} tok/s, json_schema {rates['json_schema']:.1f} tok/s, "
          f"ratio {rates['json_schema'] / rates['free text']:.3f} (concurrency {num_requests})")


async def _embed_load(max_batch_size: int, concurrency: int, requests_per_client: int) -> tuple[float, float]:
    from yaie.embeddings.batcher import DynamicBatcher
    from yaie.embeddings.config import EmbeddingConfig
    from yaie.embeddings.model import EmbeddingModel

    model = EmbeddingModel.load(EmbeddingConfig())
    batcher = DynamicBatcher(model.embed, max_batch_size=max_batch_size, max_wait_ms=5.0)
    batcher.start()

    async def client(index: int) -> None:
        for i in range(requests_per_client):
            await batcher.embed([model.tokenize(f"client {index} sends sentence number {i} about dynamic batching")])

    await client(-1)  # warm up
    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - started
    await batcher.close()
    num_requests = concurrency * requests_per_client
    return num_requests / elapsed, batcher.stats.num_inputs / max(1, batcher.stats.num_forward_passes)


def bench_embeddings(concurrency: int, requests_per_client: int) -> None:
    batched, mean_batch = asyncio.run(_embed_load(64, concurrency, requests_per_client))
    single, _ = asyncio.run(_embed_load(1, concurrency, requests_per_client))
    print(f"embeddings: batched {batched:.1f} req/s (mean batch {mean_batch:.1f}), one at a time {single:.1f} req/s, "
          f"speed-up {batched / single:.2f}x (concurrency {concurrency})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--skip-structured", action="store_true")
    parser.add_argument("--skip-embeddings", action="store_true")
    args = parser.parse_args()
    if not args.skip_structured:
        bench_structured(args.num_requests, args.max_tokens, args.rounds)
    if not args.skip_embeddings:
        bench_embeddings(args.concurrency, args.requests_per_client)


if __name__ == "__main__":
    main()
