"""Where one decode step's time goes: matmuls, attention, sampling, and everything else (Python, scheduling).

    .venv/bin/python bench/profile_step.py --batch 32 --context 320 [--quantization int8] [--num-threads 2]

Fills `batch` requests to `context` tokens, then profiles `--steps` pure-decode engine steps with the torch
profiler. "overhead" is the step's wall time not spent inside a torch op or one of our kernels. When the step
runs fused in C (int4, int8), the fused step's own phase timers split it into matmuls, attention and the rest.
"""

from __future__ import annotations

import argparse
import random
import time

from torch.profiler import ProfilerActivity, profile

from yaie import LLM, SamplingParams

CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::_int_mm", "aten::_weight_int4pack_mm", "aten::linear",
               "aten::matmul", "q8_block_linear", "int8_linear", "mkldnn::_linear_pointwise"),
    "fused decode step (C)": ("fused_decode_step",),
    "attention": ("paged_decode_attention_kernel", "aten::_scaled_dot_product", "aten::index_copy_",
                  "aten::index_select"),
    "sampling": ("aten::argmax", "aten::topk", "aten::softmax", "aten::log_softmax", "aten::sort"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=320)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--quantization", default="none")
    args = parser.parse_args()
    options = {"num_threads": args.num_threads} if args.num_threads else {}
    llm = LLM(max_num_seqs=args.batch, max_num_batched_tokens=2048, max_num_prefill_tokens=2048,
              quantization=args.quantization, **options)
    engine = llm.engine
    rng = random.Random(0)
    params = SamplingParams(temperature=0, max_tokens=args.steps * 3 + 10, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(f"p{i}", [rng.randrange(100, 40000) for _ in range(args.context)], params)
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler._running) or \
            engine.scheduler.num_waiting:
        engine.step()
    for _ in range(3):
        engine.step()
    if engine.scheduler.num_running != args.batch:
        raise SystemExit(f"only {engine.scheduler.num_running} of {args.batch} requests are decoding")
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    step_ms = (time.perf_counter() - started) / args.steps * 1000
    fused = engine.runner.fused_decoder
    if fused is not None:
        fused.time_phases(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        prof_step_ms = (time.perf_counter() - wall) / args.steps * 1000
    report(prof, step_ms, prof_step_ms, args)
    if fused is not None:
        print("inside the fused decode step (its own phase timers):")
        for name, seconds in fused.phase_seconds().items():
            ms = seconds * 1000 / args.steps
            print(f"  {name:<26}{ms:>8.1f}{ms / prof_step_ms:>9.0%}")


def report(prof: profile, step_ms: float, prof_step_ms: float, args: argparse.Namespace) -> None:
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.key_averages():
        for category, prefixes in CATEGORIES.items():
            if event.key.startswith(prefixes) and event.key not in ("aten::linear", "aten::matmul"):
                totals[category] += event.self_cpu_time_total / 1000 / args.steps
    top_level_ops = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000 / args.steps
    other_ops = top_level_ops - sum(totals.values())
    overhead = max(prof_step_ms - top_level_ops, 0.0)
    print(f"decode step, batch {args.batch}, context ~{args.context}, quantization {args.quantization}: "
          f"{step_ms:.1f} ms/step ({args.batch / step_ms * 1000:.0f} tok/s); profiled {prof_step_ms:.1f} ms")
    print(f"{'part':<22}{'ms/step':>10}{'share':>9}")
    rows = [*totals.items(), ("other torch ops", other_ops), ("python/scheduling", overhead)]
    for name, ms in rows:
        print(f"{name:<22}{ms:>10.1f}{ms / prof_step_ms:>9.0%}")


if __name__ == "__main__":
    main()
