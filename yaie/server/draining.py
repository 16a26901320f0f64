"""uvicorn.Server with a graceful drain on SIGTERM/SIGINT (the policy is described in `launch`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvicorn

from yaie.server.state import ServerState

logger = logging.getLogger("yaie.server")

ABORT_GRACE_S = 3.0  # after aborting the stragglers, how long their error chunks may take to go out


class DrainingServer(uvicorn.Server):
    """First signal: stop admitting, wait for in-flight requests (up to `shutdown_timeout_s`), abort the rest,
    then stop. A second signal, or one before the server has started, stops at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout_s: float) -> None:
        super().__init__(config)
        self.exit_code = 0
        self._state = state
        self._shutdown_timeout_s = shutdown_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Future[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Deliberately not recorded in uvicorn's _captured_signals: uvicorn re-raises those after shutdown,
        # which would turn our exit status 0 into death by SIGTERM.
        if self._drain_task is not None or self._loop is None or not self.started:
            self.should_exit = True
            self.force_exit = self._drain_task is not None
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        state = self._state
        logger.info("draining: admitting no new requests, %d in flight (waiting up to %.0fs)",
                    state.num_in_flight, self._shutdown_timeout_s)
        state.begin_drain()
        await _wait_until_idle(state, self._shutdown_timeout_s)
        if state.num_in_flight:
            logger.warning("shutdown timeout: aborting %d request(s) still running", state.abort_active())
            await _wait_until_idle(state, ABORT_GRACE_S)
        self.should_exit = True


async def _wait_until_idle(state: ServerState, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while state.num_in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
