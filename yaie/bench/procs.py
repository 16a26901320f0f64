"""Server processes for benchmarks: a command started in its own process group (so stopping it stops every
process it spawned), and the resident memory of a process tree, read from /proc (Linux).

Tree RSS is the sum of VmRSS over a process and all its descendants (found by parent pid); shared pages are
counted once per process, as `ps` would. `RssSampler` keeps the peak of that sum, sampled from a thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

_PROC = Path("/proc")


class ProcessGroup:
    """A command running as the leader of a new session/process group."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.started_s = time.monotonic()

    @classmethod
    def start(
        cls, command: Sequence[str], stdout: IO[bytes] | int | None = None, env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> ProcessGroup:
        """Launch `command` (stderr joins stdout); raises OSError when it cannot be executed."""
        process = subprocess.Popen(list(command), stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the whole group, SIGKILL it after `timeout_s`; then SIGKILL stragglers the leader left.
        Returns the leader's exit status."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._signal_group(signal.SIGKILL)  # children that outlived the leader
        return self.process.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def process_tree_pids(root_pid: int) -> list[int]:
    """`root_pid` and every live descendant (by parent pid); empty when the root is gone."""
    children: dict[int, list[int]] = {}
    for stat_path in _PROC.glob("[0-9]*/stat"):
        parent_pid = _parent_pid(stat_path)
        if parent_pid is not None:
            children.setdefault(parent_pid, []).append(int(stat_path.parent.name))
    if not (_PROC / str(root_pid)).exists():
        return []
    tree, frontier = [root_pid], [root_pid]
    while frontier:
        frontier = [child for pid in frontier for child in children.get(pid, [])]
        tree.extend(frontier)
    return tree


def process_rss_kb(pid: int) -> int | None:
    """VmRSS of one process in kB; None when it is gone (or a zombie, which has no memory line)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_tree_rss_mb(root_pid: int) -> float:
    """Resident memory of the tree rooted at `root_pid`, in MB (10^6 bytes); 0.0 when it is gone."""
    return sum(process_rss_kb(pid) or 0 for pid in process_tree_pids(root_pid)) * 1024 / 1e6


class RssSampler:
    """Samples a process tree's RSS every `interval_s` while in its `with` block; `peak_mb` is the largest
    sample (one is always taken on entry and on exit), NaN if the tree was never seen."""

    def __init__(self, root_pid: int, interval_s: float = 0.5) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.num_samples = 0
        self._peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @property
    def peak_mb(self) -> float:
        return self._peak_mb if self._peak_mb > 0 else math.nan

    def sample(self) -> float:
        rss_mb = process_tree_rss_mb(self.root_pid)
        self.num_samples += 1
        self._peak_mb = max(self._peak_mb, rss_mb)
        return rss_mb

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def _parent_pid(stat_path: Path) -> int | None:
    """Field 4 of /proc/PID/stat; the command name (field 2) may hold spaces and parentheses."""
    try:
        text = stat_path.read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None
