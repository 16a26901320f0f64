"""`yaie serve` settings: one flat table of options, four sources, one precedence.

Precedence: CLI flag > environment `YAIE_<NAME>` > YAML file (`--config`) > default. The YAML file has the
sections model / scheduler / memory / runner / server / embedding (e.g. `model.name`, `scheduler.max_num_seqs`,
`memory.block_size`); each option's YAML key is in its `yaml` field metadata. Every option is documented
once, in its Field description, which also becomes its `--help` text. `load_settings` turns the merged values
into a validated `ServeSettings`; an invalid value raises `SettingsError` naming the option and its source.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from yaie.config import (
    CacheConfig,
    Device,
    DType,
    EngineConfig,
    KVCacheDType,
    ModelConfig,
    Policy,
    Quantization,
    RunnerConfig,
    SchedulerConfig,
)
from yaie.embeddings.config import EmbeddingConfig
from yaie.server.context_window import ContextStrategy

ENV_PREFIX = "YAIE_"
LogLevel = Literal["debug", "info", "warning", "error"]


def _opt(default: Any, help_text: str, yaml_key: str, flag: str | None = None, **constraints: Any) -> Any:
    extra: dict[str, Any] = {"yaml": yaml_key}
    if flag is not None:
        extra["flag"] = flag
    return Field(default, description=help_text, json_schema_extra=extra, **constraints)


class ServeSettings(BaseModel):
    """Every `yaie serve` option, flat. Field name = env suffix (upper-cased) = CLI flag (dashed)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # model
    model: str | None = _opt(None, "GGUF file or Hugging Face model directory (default: SmolLM2-135M-Instruct).",
                             "model.name", flag="MODEL")
    served_model_name: str | None = _opt(None, "Model id clients send and /v1/models lists "
                                               "(default: the file or directory name).", "model.served_model_name")
    dtype: DType = _opt("auto", "Weight/activation dtype (auto: float32 on CPU, bfloat16 on CUDA).", "model.dtype")
    device: Device = _opt("auto", "Device to run on (auto: CUDA when available).", "model.device")
    max_model_len: int | None = _opt(None, "Context window in tokens (default: the model's own).",
                                     "model.max_model_len", ge=1)
    quantization: Quantization = _opt("none", "Weight quantization: none (exact float), int8 (int8 weights and "
                                               "activations; the fastest under load on CPU) or int4 (CPU, 4-bit "
                                               "weights; the fastest at batch 1).", "model.quantization")
    seed: int = _opt(0, "Seed of the engine's random generator (requests may pass their own).", "model.seed")
    # scheduler
    max_num_seqs: int = _opt(64, "Most sequences in one batch.", "scheduler.max_num_seqs", ge=1)
    max_num_batched_tokens: int = _opt(512, "Token budget of one engine step.",
                                       "scheduler.max_num_batched_tokens", ge=1)
    max_num_prefill_tokens: int | None = _opt(
        None, "While requests decode, prompt chunks take at most this many of a step's tokens, so a long "
              "prompt cannot stall running streams (default: 64 on CPU, the whole step budget on CUDA).",
        "scheduler.max_num_prefill_tokens", ge=1)
    prefill_context_cost_len: int | None = _opt(
        1024, "Under that cap a prompt token at position P counts as 1 + P / this many tokens (its attention reads "
              "the whole context), so chunks deep into a long prompt shrink.",
        "scheduler.prefill_context_cost_len", ge=1)
    policy: Policy = _opt("fcfs", "Scheduling policy (priority: lower `priority` value first).", "scheduler.policy")
    queue_timeout_s: float | None = _opt(None, "Seconds a request may wait in the queue before it fails "
                                               "(default: no limit).", "scheduler.queue_timeout_s",
                                         flag="--queue-timeout", gt=0)
    max_queued_requests: int | None = _opt(None, "Waiting-queue limit in requests; beyond it requests get 503 "
                                                 "(default: no limit).", "scheduler.max_queued_requests", ge=0)
    max_queued_tokens: int | None = _opt(None, "Waiting-queue limit in prompt tokens; beyond it requests get 503 "
                                               "(default: no limit).", "scheduler.max_queued_tokens", ge=0)
    # memory
    block_size: int | None = _opt(None, "KV-cache block size in tokens, a power of two (default: 64 on CPU, 16 on "
                                        "CUDA).", "memory.block_size", ge=1)
    kv_cache_memory: float | None = _opt(None, "KV-cache budget: bytes when > 1, else a fraction of free memory "
                                               "(default: 384 MiB on CPU, 85% of free GPU memory).",
                                         "memory.kv_cache_memory", gt=0)
    num_blocks: int | None = _opt(None, "Exact number of KV blocks (overrides kv_cache_memory).",
                                  "memory.num_blocks", ge=1)
    kv_cache_dtype: KVCacheDType = _opt("auto", "KV-cache element type (auto: float16 on CPU, int8 with int8 "
                                                "weights, the model's dtype on CUDA; float32 keeps K/V exact; "
                                                "int8, CPU only: half of float16's bytes).", "memory.kv_cache_dtype")
    enable_prefix_caching: bool = _opt(True, "Reuse the KV of shared prompt prefixes.",
                                       "memory.enable_prefix_caching", flag="--prefix-caching")
    prefault_kv_cache: bool = _opt(True, "On CPU, map the KV cache's pages in the background after start-up "
                                         "(off: each page on its first write, inside a step).",
                                   "memory.prefault_kv_cache", flag="--kv-prefault")
    # runner
    num_threads: int | None = _opt(None, "CPU threads for torch (default: all cores).", "runner.num_threads", ge=1)
    cpu_attention_kernel: bool = _opt(True, "On CPU, read the paged KV cache in place with the C decode kernel "
                                            "(off: the PyTorch gather path).", "runner.cpu_attention_kernel",
                                      flag="--cpu-attention-kernel")
    fused_decode_max_batch: int = _opt(8, "With --quantization int4 on CPU, decode steps of up to this many "
                                          "sequences run as one fused C call (int8 on AVX-512 VNNI CPUs: up to "
                                          "max(this, 256); 0: never).",
                                       "runner.fused_decode_max_batch", ge=0)
    onednn_linear: bool = _opt(False, "On CPU in float32, run the linears on oneDNN with pre-packed weights "
                                      "(~1.5x the throughput on AMD CPUs, ~250 MB more peak memory under load).",
                               "runner.onednn_linear", flag="--onednn-linear")
    # server
    host: str = _opt("127.0.0.1", "Address to listen on.", "server.host")
    port: int = _opt(8000, "Port to listen on (0: any free port).", "server.port", ge=0, le=65535)
    api_key: str | None = _opt(None, "Require `Authorization: Bearer <key>` on /v1/* (env YAIE_API_KEY).",
                               "server.api_key")
    max_request_bytes: int = _opt(1 << 20, "Largest request body in bytes; larger gets 413.",
                                  "server.max_request_bytes", ge=1)
    shutdown_timeout_s: float = _opt(30.0, "On SIGTERM/SIGINT, seconds to let in-flight requests finish "
                                           "before aborting them.", "server.shutdown_timeout_s",
                                     flag="--shutdown-timeout", ge=0)
    log_content: bool = _opt(False, "Include prompt and completion text in the per-request log line.",
                             "server.log_content")
    log_level: LogLevel = _opt("info", "Log level.", "server.log_level")
    context_strategy: ContextStrategy = _opt(
        "error", "What to do with a chat whose messages do not fit the context window: error (400), "
                 "truncate_oldest (drop the oldest non-system messages) or sliding_window (keep the most recent "
                 "tokens); requests may choose their own with `context_strategy`.", "server.context_strategy")
    # gateway (yaie/gateway): on when --gateway-config or a `gateway:` section of --config is given
    gateway_config: str | None = _opt(None, "Gateway YAML (API keys, rate limits, budgets, PII, audit); a "
                                            "`gateway:` section of --config works too.", "server.gateway_config")
    data_dir: str | None = _opt(None, "Directory of the gateway's SQLite database (default ~/.local/share/yaie).",
                                "server.data_dir")
    # embeddings
    embedding_model: str | None = _opt(None, "Embedding model directory served on /v1/embeddings (default: the "
                                             "packaged all-MiniLM-L6-v2; 'none' disables embeddings).",
                                       "embedding.model")
    embedding_max_batch_size: int = _opt(64, "Most inputs the embedding batcher merges into one forward pass.",
                                         "embedding.max_batch_size", ge=1)
    embedding_max_wait_ms: float = _opt(5.0, "Longest the embedding batcher holds an input to fill a batch "
                                             "(milliseconds).", "embedding.max_wait_ms", ge=0)

    def engine_config(self) -> EngineConfig:
        """The engine's frozen configs; their own checks raise ValueError naming the field."""
        return EngineConfig(
            model=ModelConfig(model=self.model, served_model_name=self.served_model_name, dtype=self.dtype,
                              device=self.device, max_model_len=self.max_model_len,
                              quantization=self.quantization, seed=self.seed),
            cache=CacheConfig(block_size=self.block_size, kv_cache_memory=self.kv_cache_memory,
                              num_blocks=self.num_blocks, enable_prefix_caching=self.enable_prefix_caching,
                              kv_cache_dtype=self.kv_cache_dtype, prefault=self.prefault_kv_cache),
            scheduler=SchedulerConfig(max_num_seqs=self.max_num_seqs,
                                      max_num_batched_tokens=self.max_num_batched_tokens,
                                      max_num_prefill_tokens=self.max_num_prefill_tokens,
                                      prefill_context_cost_len=self.prefill_context_cost_len, policy=self.policy,
                                      queue_timeout_s=self.queue_timeout_s,
                                      max_queued_requests=self.max_queued_requests,
                                      max_queued_tokens=self.max_queued_tokens),
            runner=RunnerConfig(num_threads=self.num_threads, cpu_attention_kernel=self.cpu_attention_kernel,
                                fused_decode_max_batch=self.fused_decode_max_batch,
                                onednn_linear=self.onednn_linear),
        )

    def embedding_config(self) -> EmbeddingConfig | None:
        """The embedding model's config, or None when --embedding-model is 'none'."""
        if self.embedding_model is not None and self.embedding_model.lower() == "none":
            return None
        return EmbeddingConfig(model=self.embedding_model, max_batch_size=self.embedding_max_batch_size,
                               max_wait_ms=self.embedding_max_wait_ms)

    def server_config(self) -> ServerConfig:
        return ServerConfig(host=self.host, port=self.port, api_key=self.api_key,
                            max_request_bytes=self.max_request_bytes, shutdown_timeout_s=self.shutdown_timeout_s,
                            log_content=self.log_content, log_level=self.log_level,
                            context_strategy=self.context_strategy)


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP layer's settings (the engine's are in EngineConfig)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    shutdown_timeout_s: float = 30.0
    log_content: bool = False
    log_level: str = "info"
    context_strategy: str = "error"


class SettingsError(ValueError):
    """An option has an invalid value or the config file is unusable; the message names the option and source."""


def cli_flag(name: str) -> str:
    extra = ServeSettings.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    flag = extra.get("flag")
    return str(flag) if flag is not None else "--" + name.replace("_", "-")


def yaml_key(name: str) -> str:
    extra = ServeSettings.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra["yaml"])


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One argparse option per ServeSettings field (default None = "not given on the command line")."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="YAML file with sections model/scheduler/memory/runner/server/embedding (env YAIE_CONFIG).")
    for name, info in ServeSettings.model_fields.items():
        flag = cli_flag(name)
        default = "" if info.default is None else f", default {info.default}"
        help_text = f"{info.description} [env {env_var(name)}, YAML {yaml_key(name)}{default}]".replace("%", "%%")
        choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else None
        if flag == "MODEL":
            parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help=help_text)
        elif info.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, choices=choices,
                                metavar="{" + ",".join(choices) + "}" if choices else name.upper(), help=help_text)


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options actually given on the command line."""
    return {name: getattr(args, name) for name in ServeSettings.model_fields if getattr(args, name, None) is not None}


def load_settings(cli: Mapping[str, Any], config_path: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Merge defaults < YAML < env < CLI and validate. Raises SettingsError naming the option and its source."""
    environ = os.environ if environ is None else environ
    if config_path is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_path = Path(environ[ENV_PREFIX + "CONFIG"])
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_path is not None:
        for name, value in read_yaml_options(config_path).items():
            values[name], sources[name] = value, f"{config_path} key {yaml_key(name)}"
    for name in ServeSettings.model_fields:
        if env_var(name) in environ:
            values[name], sources[name] = environ[env_var(name)], f"environment {env_var(name)}"
    for name, value in cli.items():
        values[name], sources[name] = value, f"command line {cli_flag(name)}"
    try:
        settings = ServeSettings.model_validate(_blank_to_none(values))
        settings.engine_config()
    except ValidationError as exc:
        raise SettingsError(_describe(exc, sources)) from None
    except ValueError as exc:
        raise SettingsError(f"invalid configuration: {exc}") from None
    return settings


def _blank_to_none(values: dict[str, Any]) -> dict[str, Any]:
    """An empty string (e.g. `YAIE_MAX_MODEL_LEN=`) means "unset" for optional options."""
    return {k: (None if v == "" and _is_optional(k) else v) for k, v in values.items()}


def _is_optional(name: str) -> bool:
    return ServeSettings.model_fields[name].default is None


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        source = sources.get(name, "default")
        lines.append(f"invalid value {error.get('input')!r} for {name} (from {source}): {error['msg']}")
    return "; ".join(lines)


def read_yaml_options(path: Path) -> dict[str, Any]:
    """Flatten a sectioned YAML config into option names. Unknown sections or keys raise SettingsError."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(document, dict):
        raise SettingsError(f"config file {path}: the top level must be a mapping of sections")
    by_key = {yaml_key(name): name for name in ServeSettings.model_fields}
    sections = sorted({key.split(".")[0] for key in by_key})
    options: dict[str, Any] = {}
    for section, entries in document.items():
        if section == "gateway":  # read by yaie.gateway.config
            continue
        if section not in sections:
            raise SettingsError(f"config file {path}: unknown section {section!r}; valid: {', '.join(sections)}")
        if not isinstance(entries, dict):
            raise SettingsError(f"config file {path}: section {section!r} must be a mapping")
        for key, value in entries.items():
            dotted = f"{section}.{key}"
            if dotted not in by_key:
                valid = ", ".join(k for k in by_key if k.startswith(section + "."))
                raise SettingsError(f"config file {path}: unknown key {dotted!r}; valid: {valid}")
            options[by_key[dotted]] = value
    return options
