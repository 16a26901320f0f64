"""Real PostgreSQL and redis-server processes for the gateway tests, on free loopback ports in temp dirs.

No skipping: when a binary is missing the fixture fails and says which Debian package to install
(`apt-get install -y postgresql redis-server`; `.ci/run` does it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from yaie.gateway.rate_limit import WINDOW_S

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, package: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        pytest.fail(f"{name} not found: the gateway tests need a real {package} "
                    f"(apt-get update && apt-get install -y {package})", pytrace=False)
    return found


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root without runuser: cannot start PostgreSQL as a non-root user", pytrace=False)
    return [runuser, "-u", "postgres", "--", *command]


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    pg_ctl: str
    _num_databases: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        self._num_databases += 1
        name = f"yaie_test_{os.getpid()}_{self._num_databases}"
        psql = find_binary("psql", "postgresql")
        subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
                        f"CREATE DATABASE {name}"], check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_postgres_user([self.pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    initdb, pg_ctl = find_binary("initdb", "postgresql"), find_binary("pg_ctl", "postgresql")
    root = Path(tempfile.mkdtemp(prefix="yaie-pg-"))
    data_dir = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    root.chmod(0o755)
    init = subprocess.run(_as_postgres_user([initdb, "-D", str(data_dir), "-U", "postgres", "--auth=trust",
                                             "--no-sync", "-E", "UTF8"]), capture_output=True, text=True)
    if init.returncode != 0:
        pytest.fail(f"initdb failed: {init.stderr[-2000:]}", pytrace=False)
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -F -c max_connections=200"
    started = subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data_dir), "-o", options, "-l",
                                                str(root / "log"), "-w", "-t", str(int(START_TIMEOUT_S)), "start"]),
                             capture_output=True, text=True)
    if started.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {started.stderr[-1000:]}\n{log[-2000:]}", pytrace=False)
    return PostgresServer(port, data_dir, pg_ctl)


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        subprocess.run([find_binary("redis-cli", "redis-server"), "-p", str(self.port), "FLUSHALL"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis() -> RedisServer:
    binary = find_binary("redis-server", "redis-server")
    root = Path(tempfile.mkdtemp(prefix="yaie-redis-"))
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return RedisServer(port, process, root)
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not answer PING", pytrace=False)


def start_well_inside_a_window(min_left_s: float = 5.0) -> None:
    """Rate-limit windows are aligned to wall-clock minutes; a test that counts admissions within one window first
    waits for the next window when fewer than `min_left_s` seconds are left in this one."""
    left_s = WINDOW_S - time.time() % WINDOW_S
    if left_s < min_left_s:
        time.sleep(left_s + 0.05)
