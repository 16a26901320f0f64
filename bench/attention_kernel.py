"""Time the C paged decode-attention kernel alone on a decode-step shape.

    .venv/bin/python bench/attention_kernel.py --batch 32 --context 320 [--layers 30] [--scatter] [--kv-dtype D]
        [--block-size 64]

SmolLM2's attention shape (9 query heads, 3 kv heads, head_dim 64), blocks of 64 tokens (`--block-size`),
float16 K/V by default (or `--kv-dtype`). `--layers L`
spreads the cache over L layers' worth of memory and cycles through them, as a real step does (L = 1 keeps
it in the last-level cache); `--scatter` gives every sequence randomly placed blocks instead of contiguous ones.
"""

from __future__ import annotations

import argparse
import time

import torch

from yaie.attention.cpu_kernel import load_decode_kernel
from yaie.attention.kv_layout import bytes_per_slot, cache_shape, write_kv

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=320)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--scatter", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--block-size", type=int, default=64, help="tokens per KV block (the CPU default: 64)")
    parser.add_argument("--kv-dtype", default="float16", choices=["float16", "bfloat16", "float32", "int8"])
    args = parser.parse_args()
    kernel = load_decode_kernel()
    if kernel is None:
        raise SystemExit("the C attention kernel did not build")
    blocks_per_seq = -(-args.context // args.block_size)
    blocks_per_layer = args.batch * blocks_per_seq
    num_blocks = blocks_per_layer * args.layers
    num_slots = num_blocks * args.block_size
    kv_dtype = getattr(torch, args.kv_dtype)
    kv_cache = torch.zeros(cache_shape(num_slots, NUM_KV_HEADS, HEAD_DIM, kv_dtype), dtype=kv_dtype)
    for start in range(0, num_slots, 65536):  # written in pieces: the float K/V of the whole cache is large
        slots = torch.arange(start, min(start + 65536, num_slots))
        write_kv(kv_cache, slots, torch.randn(len(slots), NUM_KV_HEADS, HEAD_DIM),
                 torch.randn(len(slots), NUM_KV_HEADS, HEAD_DIM))
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    order = torch.randperm(num_blocks) if args.scatter else torch.arange(num_blocks)
    tables = [order[i * blocks_per_layer:(i + 1) * blocks_per_layer].view(args.batch, blocks_per_seq).contiguous()
              for i in range(args.layers)]  # one [B, M] block table per layer
    q = torch.randn(args.batch, NUM_HEADS, HEAD_DIM)
    context_lens = torch.full((args.batch,), args.context, dtype=torch.int64)
    scale = HEAD_DIM**-0.5
    for table in tables:
        kernel(q, k_cache, v_cache, table, context_lens, args.block_size, scale)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        for table in tables:
            kernel(q, k_cache, v_cache, table, context_lens, args.block_size, scale)
            calls += 1
    seconds_per_call = (time.perf_counter() - started) / calls
    kv_bytes = args.batch * args.context * bytes_per_slot(NUM_KV_HEADS, HEAD_DIM, kv_dtype)
    print(f"{args.kv_dtype} K/V, batch {args.batch}, context {args.context}, {args.layers} layers' memory"
          f"{', scattered blocks' if args.scatter else ''}, {torch.get_num_threads()} threads: "
          f"{seconds_per_call * 1e6:.0f} us per layer call, {kv_bytes / seconds_per_call / 1e9:.1f} GB/s of K/V")


if __name__ == "__main__":
    main()
