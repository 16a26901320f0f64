"""Quality of the quantized schemes against float32 on the same weights: perplexity and greedy agreement.

    python bench/quality.py [--model PATH] [--schemes none,int8,int4,int4-fused] [--text FILE] [--json OUT]

Perplexity: teacher-forced next-token log-likelihood over non-overlapping windows of a plain-English text (by
default the GPL-3 text every Debian system ships at /usr/share/common-licenses/GPL-3), computed with our own
model forward (a private KV cache per window, of the element type the scheme serves with, so the engine's
cache is untouched and K/V rounding counts).
Greedy agreement: a fixed set of chat prompts generated at temperature 0; per scheme, the share of prompts whose
first K tokens equal float32's, and the mean length of the common prefix.
`int4-fused`: int4 as a batch-1 client sees it, through the fused C decode step: perplexity is scored one token
per decode step (teacher-forced) and the greedy prompts run one at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from yaie import LLM, SamplingParams
from yaie.runner.fused_decode import FusedDecoder, build_fused_decoder
from yaie.runner.input_batch import prepare_inputs
from yaie.runner.model_runner import ModelRunner, allocate_kv_caches
from yaie.runner.standalone import run_prompt
from yaie.scheduler.output import ScheduledChunk, SchedulerOutput
from yaie.types import Request

DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")
PROMPTS = (
    "What is the capital of France?", "Write a haiku about autumn leaves.", "Explain what a CPU cache is.",
    "Give three tips for learning a new language.", "What is 17 times 23?", "Name the planets of the solar system.",
    "Summarise the plot of Romeo and Juliet in two sentences.", "How do I reverse a list in Python?",
    "What causes the seasons on Earth?", "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?", "Write a limerick about a cat.", "What is photosynthesis?",
    "List five fruits that are red.", "How does a bicycle stay upright?", "What is the boiling point of water?",
)


@dataclass(frozen=True)
class SchemeQuality:
    scheme: str
    perplexity: float
    num_scored_tokens: int
    prompts_identical: float  # share of prompts whose first `num_greedy_tokens` equal float32's
    mean_common_prefix: float  # tokens
    num_greedy_tokens: int
    seconds: float


@torch.inference_mode()
def perplexity(llm: LLM, token_ids: list[int], window: int, fused: bool = False) -> tuple[float, int]:
    """exp(mean NLL) of each token given the ones before it in its window; returns (ppl, tokens scored).
    Each window is one prefill chunk through the model, or with `fused` one single-token step per token through
    the fused C decode step (float16 K/V, as served)."""
    runner = llm.engine.runner
    num_blocks = math.ceil(window / runner.block_size)
    block_ids = list(range(num_blocks))
    if fused:
        kv_dtype = runner.kv_caches[0].dtype  # as served
        kv_caches = allocate_kv_caches(runner.model, num_blocks, runner.block_size, kv_dtype, runner.device)
        decoder = build_fused_decoder(runner.model, kv_caches, runner.block_size)
        if decoder is None:
            raise SystemExit("the fused decode step is not available for this model / machine")
    total_nll, num_scored = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        ids = token_ids[start:start + window]
        if len(ids) < 2:
            break
        request = Request(f"ppl-{start}", ids, SamplingParams())
        if fused:
            total_nll += _decode_nll(runner, decoder, request, block_ids)
        else:
            total_nll += _prefill_nll(runner, request)
        num_scored += len(ids) - 1
    return math.exp(total_nll / num_scored), num_scored


def _prefill_nll(runner: ModelRunner, request: Request) -> float:
    """Summed NLL of request's tokens 1..T-1, the window as one prompt chunk."""
    ids, model = request.prompt_token_ids, runner.model
    hidden = run_prompt(model, ids, runner.kv_caches[0].dtype)  # [T, H], K/V read back as served
    logprobs = torch.log_softmax(model.compute_logits(hidden[:-1]), dim=-1)  # [T-1, V]
    targets = torch.tensor(ids[1:], device=logprobs.device)
    return -logprobs.gather(1, targets[:, None]).sum().item()


def _decode_nll(runner: ModelRunner, decoder: FusedDecoder, request: Request, block_ids: list[int]) -> float:
    """Summed NLL of request's tokens 1..T-1, each position its own single-token fused decode step."""
    ids, nll = request.prompt_token_ids, 0.0
    for position in range(len(ids) - 1):
        chunk = ScheduledChunk(request, ids[position:position + 1], position, block_ids, needs_sample=True)
        inputs = prepare_inputs(SchedulerOutput([chunk], 1), runner.block_size, runner.device, runner.decode_kernel)
        decode = inputs.attn.decode
        assert decode is not None
        hidden = decoder(inputs.input_ids, inputs.positions, inputs.attn.slot_mapping, decode.block_table,
                         decode.context_lens)  # [1, H]
        nll -= torch.log_softmax(runner.model.compute_logits(hidden), dim=-1)[0, ids[position + 1]].item()
    return nll


def greedy_tokens(llm: LLM, num_tokens: int) -> list[list[int]]:
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.chat(messages, params)]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def evaluate(args: argparse.Namespace) -> list[SchemeQuality]:
    text = Path(args.text).read_text()
    results: list[SchemeQuality] = []
    reference: list[list[int]] | None = None
    for scheme in args.schemes.split(","):
        started = time.monotonic()
        fused = scheme.endswith("-fused")
        llm = LLM(args.model, quantization=scheme.removesuffix("-fused"), max_num_seqs=1 if fused else len(PROMPTS))
        token_ids = llm.tokenizer(text)["input_ids"][: args.num_text_tokens]
        ppl, num_scored = perplexity(llm, token_ids, args.window, fused)
        greedy = greedy_tokens(llm, args.num_greedy_tokens)
        reference = reference if reference is not None else greedy
        prefixes = [common_prefix(g, r) for g, r in zip(greedy, reference, strict=True)]
        results.append(SchemeQuality(
            scheme, ppl, num_scored, sum(p == args.num_greedy_tokens for p in prefixes) / len(prefixes),
            sum(prefixes) / len(prefixes), args.num_greedy_tokens, time.monotonic() - started))
        print(f"{scheme}: perplexity {ppl:.3f} over {num_scored} tokens; greedy identical "
              f"{results[-1].prompts_identical:.0%}, mean common prefix {results[-1].mean_common_prefix:.1f}"
              f"/{args.num_greedy_tokens}", flush=True)
        del llm
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=".gguf or Hugging Face directory (default: SmolLM2)")
    parser.add_argument("--schemes", default="none,int8,int4", help="first one is the reference")
    parser.add_argument("--text", default=str(DEFAULT_TEXT))
    parser.add_argument("--num-text-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--num-greedy-tokens", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = evaluate(args)
    print("\n| scheme | perplexity | greedy: prompts identical | mean common prefix |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.scheme} | {r.perplexity:.3f} | {r.prompts_identical:.0%} | "
              f"{r.mean_common_prefix:.1f} / {r.num_greedy_tokens} |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
