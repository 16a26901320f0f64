"""AsyncEngine: the LLMEngine on a background thread, with one asyncio stream per request.

Data flow: `generate()` (event loop) tokenizes + validates, then posts an "add" command to the engine thread's
inbox; the engine thread loops `step()` and hands each step's RequestOutput deltas back to the event loop in
one `call_soon_threadsafe`; each request's `_OutputStream` feeds its `generate()` iterator. Torch releases the
GIL in its kernels, so HTTP work proceeds while the model runs. Leaving the iterator early aborts the request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from yaie.config import EngineConfig
from yaie.engine.engine import EngineStats, LLMEngine
from yaie.engine.errors import EngineDeadError, EngineOverloadedError
from yaie.types import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Add:
    request_id: str
    token_ids: list[int]
    prompt: str | None
    params: SamplingParams
    priority: int


@dataclass(frozen=True)
class _Abort:
    request_id: str


class _OutputStream:
    """One request's outputs, put by the event loop's `_dispatch` and taken by that request's `generate()`:
    a deque and at most one waiting future (an asyncio.Queue does several times the work per item)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[RequestOutput | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: RequestOutput | BaseException) -> None:
        self._items.append(item)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> RequestOutput | BaseException:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()


class AsyncEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.engine = LLMEngine(config)
        self.model_name = self.engine.model_name
        self.max_model_len = self.engine.max_model_len
        self.tokenizer = self.engine.tokenizer
        self._inbox: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _OutputStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._draining = False
        self._stopping = False

    def start(self) -> None:
        """Start the engine thread; must be called from inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="yaie-engine", daemon=True)
        self._thread.start()
        self.engine.start_background_work()

    async def shutdown(self) -> None:
        self._stopping = True
        self._inbox.put(None)
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def begin_drain(self) -> None:
        self._draining = True

    def check_admission(self, num_prompt_tokens: int) -> None:
        if self._draining:
            raise EngineOverloadedError("the server is shutting down and admits no new requests", 5.0)
        self.engine.check_admission(num_prompt_tokens)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str, priority: int = 0
    ) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutput deltas until the request finishes (see module docstring)."""
        if self._error is not None or self._loop is None:
            raise EngineDeadError("the engine is not running")
        token_ids = self.engine.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.engine.validate_prompt(token_ids, params)
        self.check_admission(len(token_ids) * params.n)
        if params.structured is not None:  # compile off the engine thread; an invalid grammar raises here
            await asyncio.to_thread(self.engine.structured.compiler.compile, params.structured)
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        stream = _OutputStream()
        self._streams[request_id] = stream
        self._post(_Add(request_id, token_ids, prompt if isinstance(prompt, str) else None, params, priority))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._post(_Abort(request_id))

    def _post(self, command: _Add | _Abort) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    # ---- engine thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self._drain_inbox():
                    break
                if self.engine.has_unfinished_requests():
                    self._deliver(self.engine.step())
                else:
                    self._wakeup.wait()
                    self._wakeup.clear()
        except BaseException as exc:  # an internal fault: every waiting stream learns the engine died
            logger.exception("engine loop died")
            self._error = exc
            self._fail_all(EngineDeadError(f"the engine loop stopped: {exc!r}"))

    def _drain_inbox(self) -> bool:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if command is None:
                return False
            if isinstance(command, _Abort):
                final = self.engine.abort(command.request_id)
                if final is not None:  # a server-side abort: the stream still waits for its last delta
                    self._deliver([final])
                continue
            try:
                self.engine.add_request(command.request_id, command.token_ids, command.params,
                                        command.priority)
                self.engine.output_processor.states[command.request_id].prompt = command.prompt
            except Exception as exc:  # validation raced with state: report to that request only
                self._deliver_error(command.request_id, exc)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        if outputs and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        def put() -> None:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put(exc)

        if self._loop is not None:
            self._loop.call_soon_threadsafe(put)

    def _fail_all(self, exc: BaseException) -> None:
        def put_all() -> None:
            for stream in self._streams.values():
                stream.put(exc)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(put_all)
