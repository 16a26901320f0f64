"""Backpressure and graceful shutdown, on a server of its own (two sequences at a time, a one-request queue).

The tests run in file order on one server: the queue test leaves it idle, the shutdown test ends it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import API_KEY, HTTP_TIMEOUT_S, ServerProcess, sse_payloads, start_server

SHUTDOWN_TIMEOUT_S = 20.0  # long enough for `in_flight` even on a busy 2-core machine
STORY = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("small"), "--max-num-seqs", "2", "--max-queued-requests", "1",
                          "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S), "--embedding-model", "none")
    yield server
    if server.process.poll() is None:
        server.stop(signal.SIGKILL)


class BackgroundStream:
    """A streaming chat request on its own thread and event loop; `payloads` holds what has arrived.

    `hang_up` cancels the request task, which closes the connection at once (the server sees a disconnect)."""

    def __init__(self, server: ServerProcess, **body: Any) -> None:
        self.payloads: list[Any] = []
        self.status: int | None = None
        self.first_data = threading.Event()
        self._server = server
        self._body = {"messages": STORY, "stream": True, **body}
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._read())
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._task,), daemon=True)
        self._thread.start()

    async def _read(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        try:
            async with httpx.AsyncClient(base_url=self._server.base_url, timeout=HTTP_TIMEOUT_S,
                                         headers=headers) as http, \
                    http.stream("POST", "/v1/chat/completions", json=self._body) as response:
                self.status = response.status_code
                async for line in response.aiter_lines():
                    self.payloads.extend(sse_payloads(iter([line])))
                    if self.payloads:
                        self.first_data.set()
        except asyncio.CancelledError:
            pass
        finally:
            self.first_data.set()

    def hang_up(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)

    def join(self, timeout_s: float = 120.0) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "stream did not finish"


def test_full_queue_is_503_with_retry_after(small_server: ServerProcess) -> None:
    running = []
    for count in (1.0, 2.0):  # one at a time: a request is "waiting" until the engine's next step admits it
        running.append(BackgroundStream(small_server, max_tokens=500, ignore_eos=True))
        assert small_server.wait_for_metric("yaie:num_requests_running", count) == count
    waiting = BackgroundStream(small_server, max_tokens=500, ignore_eos=True)
    assert small_server.wait_for_metric("yaie:num_requests_waiting", 1.0) == 1.0
    with small_server.http() as http:
        refused = http.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 2})
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "ServiceUnavailableError" and error["code"] == 503 and "queue" in error["message"]
    for stream in (waiting, *running):
        stream.hang_up()
    for stream in (waiting, *running):
        stream.join()
    assert small_server.wait_for_metric("yaie:num_requests_running", 0.0) == 0.0
    assert small_server.wait_for_metric("yaie:num_requests_waiting", 0.0) == 0.0


def test_sigterm_drains_in_flight_aborts_stragglers_and_exits_zero(small_server: ServerProcess) -> None:
    straggler = BackgroundStream(small_server, max_tokens=900, ignore_eos=True)  # outlasts the drain
    assert small_server.wait_for_metric("yaie:num_requests_running", 1.0) == 1.0
    in_flight = BackgroundStream(small_server, max_tokens=6, ignore_eos=True)  # finishes within the drain
    assert in_flight.first_data.wait(120)
    small_server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with httpx.Client(base_url=small_server.base_url, timeout=30) as http:
        refused = http.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 2},
                            headers={"Authorization": f"Bearer {API_KEY}"})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert http.get("/health").status_code == 503
    in_flight.join()
    assert in_flight.payloads[-1] == "[DONE]"
    assert in_flight.payloads[-2]["choices"][0]["finish_reason"] == "length"  # completed while draining
    straggler.join(SHUTDOWN_TIMEOUT_S + 60)
    assert straggler.status == 200 and straggler.payloads[-1] == "[DONE]"
    error = straggler.payloads[-2]["error"]  # aborted at the shutdown timeout, with an error chunk
    assert error["code"] == 503 and "shutting down" in error["message"]
    assert small_server.process.wait(timeout=60) == 0
