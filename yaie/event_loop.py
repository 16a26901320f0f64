"""The process edge's event loop: uvloop when installed, else asyncio's own.

On a two-core machine the event-loop thread (HTTP server or load generator) shares the cores with the engine's
compute threads; uvloop's C sockets and callbacks leave more of them to the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when it is importable."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
