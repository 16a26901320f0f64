"""A real `yaie serve` subprocess with the gateway on (imitates tests/e2e/conftest.py, minus YAIE_API_KEY)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.gateway.services import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "gateway-admin-secret"
HTTP_TIMEOUT_S = 120.0


@dataclass
class GatewayServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=secret, max_retries=0, timeout=HTTP_TIMEOUT_S)

    def async_client(self, secret: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=secret, max_retries=0,
                                  timeout=HTTP_TIMEOUT_S)

    def admin(self, method: str, path: str, admin_key: str = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base_url + path, headers={"Authorization": f"Bearer {admin_key}"},
                             timeout=HTTP_TIMEOUT_S, **kwargs)

    def create_key(self, **fields: Any) -> tuple[str, str]:
        """(key id, secret) of a new key made through the admin API."""
        response = self.admin("POST", "/admin/keys", json={"name": "test", **fields})
        assert response.status_code == 201, response.text
        return response.json()["id"], response.json()["secret"]

    def metrics(self) -> str:
        return httpx.get(self.base_url + "/metrics", timeout=HTTP_TIMEOUT_S).text

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)


def launch(log_dir: Path, gateway_yaml: Path, *extra_args: str) -> GatewayServer:
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    command = [sys.executable, "-m", "yaie.cli", "serve", "--port", str(port), "--max-model-len", "512",
               "--num-blocks", "256", "--embedding-model", "none", "--gateway-config", str(gateway_yaml),
               *extra_args]
    env = {k: v for k, v in os.environ.items() if k not in ("YAIE_API_KEY", "YAIE_CONFIG")}
    env |= {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "YAIE_ADMIN_KEY": ADMIN_KEY}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return GatewayServer(f"http://127.0.0.1:{port}", process, log_path)


def write_gateway_yaml(path: Path, **settings: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"gateway": settings}))
    return path
