"""Waiting for a `yaie serve` subprocess started by a test fixture (shared by the e2e and gateway suites)."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Protocol, TypeVar

import httpx
import pytest

STARTUP_TIMEOUT_S = 240.0


class ServeProcess(Protocol):
    base_url: str
    process: subprocess.Popen[bytes]

    def log_text(self) -> str: ...

    def stop(self, sig: int = ..., timeout_s: float = ...) -> int: ...


ServerT = TypeVar("ServerT", bound=ServeProcess)


def wait_healthy(server: ServerT, timeout_s: float = STARTUP_TIMEOUT_S) -> ServerT:
    """Return once /health answers 200; fail the test with the server's log if it exits or never gets there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"yaie serve exited with {server.process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(server.base_url + "/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop(signal.SIGKILL)
    pytest.fail(f"yaie serve not healthy after {timeout_s}s:\n{server.log_text()[-3000:]}")
