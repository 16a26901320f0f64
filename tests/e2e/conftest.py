"""A real `yaie serve` subprocess on a free port, with the real default model and small limits.

`server` is shared by the whole session (one model load); tests that stop or saturate a server start their
own with `start_server`. Helpers read SSE streams and Prometheus metrics the way any client would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server_process import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "e2e-secret"
MAX_MODEL_LEN = 1024
MAX_REQUEST_BYTES = 200_000
HTTP_TIMEOUT_S = 180.0


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_url, api_key=API_KEY, max_retries=0, timeout=HTTP_TIMEOUT_S)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=HTTP_TIMEOUT_S,
                            headers={"Authorization": f"Bearer {API_KEY}"})

    def model(self) -> str:
        return self.client().models.list().data[0].id

    def metrics(self) -> str:
        return httpx.get(self.base_url + "/metrics", timeout=HTTP_TIMEOUT_S).text

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample, e.g. metric('yaie:request_success_total', 'finish_reason="length"')."""
        for line in self.metrics().splitlines():
            if (line.startswith(name + "{") and labels in line) or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for_metric(self, name: str, expected: float, timeout_s: float = 30.0) -> float:
        deadline = time.monotonic() + timeout_s
        value = self.metric(name)
        while value != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(name)
        return value

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(log_dir: Path, *extra_args: str) -> ServerProcess:
    """Start `yaie serve` (API key from the environment, as YAIE_API_KEY) and wait until /health is 200."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    command = [sys.executable, "-m", "yaie.cli", "serve", "--port", str(port), "--max-model-len",
               str(MAX_MODEL_LEN), "--num-blocks", "256", "--max-request-bytes", str(MAX_REQUEST_BYTES),
               *extra_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "YAIE_API_KEY": API_KEY}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return wait_healthy(ServerProcess(f"http://127.0.0.1:{port}", process, log_path))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("serve"))
    yield process
    process.stop(timeout_s=60)


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def model(server: ServerProcess) -> str:
    return server.model()


def sse_payloads(lines: Iterator[str]) -> list[Any]:
    """The `data:` payloads of an SSE stream, JSON-decoded, with the final '[DONE]' kept as a string."""
    payloads: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def stream_raw(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_payloads(response.iter_lines())


def histogram_count(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}_count{{[^}}]*}} (\S+)$", metrics_text, re.M)
    return float(match.group(1)) if match else 0.0
