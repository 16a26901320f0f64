"""Server process handling for `yaie bench compare`, on real child processes: tree RSS from /proc, the
sampler's peak, stopping a whole process group, and peers that are missing or fail to start."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from yaie.bench.compare import CompareConfig, build_system, run_system
from yaie.bench.procs import ProcessGroup, RssSampler, process_tree_pids, process_tree_rss_mb
from yaie.bench.workloads import select_workloads

ALLOC_MB = 200
# allocates ALLOC_MB of touched memory (bytes * n writes every page), says so, then waits to be killed
ALLOCATE = f"import sys, time; block = b'x' * ({ALLOC_MB} * 10**6); print('ready', flush=True); time.sleep(120)"


def _start(code: str) -> ProcessGroup:
    return ProcessGroup.start([sys.executable, "-c", code], stdout=subprocess.PIPE)


def _wait_for_lines(group: ProcessGroup, count: int) -> list[str]:
    assert group.process.stdout is not None
    return [group.process.stdout.readline().decode().strip() for _ in range(count)]


@pytest.fixture
def groups() -> Iterator[list[ProcessGroup]]:
    started: list[ProcessGroup] = []
    yield started
    for group in started:
        group.stop(timeout_s=1.0)


def test_rss_of_a_process_that_allocates_200_mb(groups: list[ProcessGroup]) -> None:
    group = _start(ALLOCATE)
    groups.append(group)
    assert _wait_for_lines(group, 1) == ["ready"]
    rss_mb = process_tree_rss_mb(group.pid)
    assert ALLOC_MB <= rss_mb < ALLOC_MB + 150


def test_tree_rss_includes_children(groups: list[ProcessGroup]) -> None:
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {ALLOCATE!r}], stdout=subprocess.PIPE)
        print(child.pid, flush=True)
        print(child.stdout.readline().decode().strip(), flush=True)
        time.sleep(120)
    """)
    group = _start(parent_code)
    groups.append(group)
    child_pid_text, ready = _wait_for_lines(group, 2)
    assert ready == "ready"
    assert process_tree_pids(group.pid) == [group.pid, int(child_pid_text)]
    assert process_tree_rss_mb(group.pid) >= ALLOC_MB + 5  # the child's block plus the parent interpreter
    assert process_tree_rss_mb(int(child_pid_text)) < process_tree_rss_mb(group.pid)


def test_sampler_keeps_the_peak_after_memory_is_freed(groups: list[ProcessGroup]) -> None:
    code = ("import time; print('start', flush=True); time.sleep(0.3); block = b'x' * (200 * 10**6); "
            "time.sleep(1.0); del block; print('freed', flush=True); time.sleep(120)")
    group = _start(code)
    groups.append(group)
    with RssSampler(group.pid, interval_s=0.1) as sampler:
        assert _wait_for_lines(group, 2) == ["start", "freed"]
        time.sleep(0.3)
    assert sampler.num_samples >= 10
    assert sampler.peak_mb >= ALLOC_MB
    assert process_tree_rss_mb(group.pid) < ALLOC_MB / 2


def test_rss_of_a_missing_process_is_zero_and_the_sampler_reports_nan() -> None:
    gone_pid = 2**22 + 17  # above the usual pid_max range
    assert process_tree_pids(gone_pid) == [] and process_tree_rss_mb(gone_pid) == 0.0
    with RssSampler(gone_pid, interval_s=0.05) as sampler:
        pass
    assert math.isnan(sampler.peak_mb)


def test_stop_kills_a_group_that_ignores_sigterm_including_grandchildren(groups: list[ProcessGroup]) -> None:
    code = textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    group = _start(code)
    groups.append(group)
    (child_pid_text,) = _wait_for_lines(group, 1)
    started_s = time.monotonic()
    assert group.stop(timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started_s < 10
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child_pid_text}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # reaped by init once killed
    assert not _is_running(int(child_pid_text))


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _config(tmp_path: Path, systems: tuple[str, ...], **changes: object) -> CompareConfig:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return CompareConfig(model=model, systems=systems, workload_names=("W1",), port=_free_port(),
                         peers_dir=tmp_path / "peers", log_dir=tmp_path / "logs", startup_timeout_s=20.0,
                         **changes)  # type: ignore[arg-type]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_yaie_variants_build_their_serve_flags(tmp_path: Path) -> None:
    config = _config(tmp_path, ("yaie",), yaie_args=("--num-threads", "1"))
    command = build_system("yaie-int8-noprefix", config).command
    assert command[:4] == (sys.executable, "-m", "yaie.cli", "serve")
    assert command[4:] == ("--host", "127.0.0.1", "--port", str(config.port), "--quantization", "int8",
                           "--no-prefix-caching", "--num-threads", "1", str(config.model))
    peer = build_system("llama-server", config)
    assert peer.command == ("bash", str(tmp_path / "peers" / "llama-server" / "serve.sh"), str(config.port),
                            str(config.model))
    with pytest.raises(ValueError, match="systems"):
        _config(tmp_path, ("yaie-fp8",))
    with pytest.raises(ValueError, match="systems"):
        _config(tmp_path, ("../evil",))
    with pytest.raises(ValueError, match="model"):
        CompareConfig(model=tmp_path / "absent.gguf")


def test_a_missing_peer_fails_with_a_clear_message(tmp_path: Path) -> None:
    config = _config(tmp_path, ("nothere",))
    result = run_system(build_system("nothere", config), config, select_workloads(["W1"]), log=lambda _: None)
    assert result.error is not None and "serve.sh is missing" in result.error and "--install-peers" in result.error
    config = _config(tmp_path, ("nothere",), install_peers=True)
    result = run_system(build_system("nothere", config), config, select_workloads(["W1"]), log=lambda _: None)
    assert result.error is not None and "install.sh is missing" in result.error


def test_a_peer_whose_server_exits_is_failed_with_its_log_tail(tmp_path: Path) -> None:
    peer_dir = tmp_path / "peers" / "broken"
    peer_dir.mkdir(parents=True)
    (peer_dir / "install.sh").write_text("echo installing broken\n")
    (peer_dir / "serve.sh").write_text('echo "serving on $1 with $2"; echo "no such binary" >&2; exit 3\n')
    config = _config(tmp_path, ("broken",), install_peers=True)
    result = run_system(build_system("broken", config), config, select_workloads(["W1"]), log=lambda _: None)
    assert result.error is not None and "exited with 3" in result.error
    assert f"serving on {config.port} with {config.model}" in result.error and "no such binary" in result.error
    assert "installing broken" in Path(result.log_path).read_text()
    assert result.workloads == () and result.startup_s is None


def test_a_busy_port_is_refused_before_starting_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = _config(tmp_path, ("yaie",))
        config = CompareConfig(**{**config.__dict__, "port": listener.getsockname()[1]})
        result = run_system(build_system("yaie", config), config, select_workloads(["W1"]), log=lambda _: None)
    assert result.error is not None and "already in use" in result.error
    assert os.path.getsize(result.log_path) == 0
