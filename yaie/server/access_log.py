"""One structured JSON line per API request, on the `yaie.access` logger.

The request middleware creates a `RequestContext`, the serving layer fills in what it learns (tokens, TTFT,
finish reasons), and the middleware writes the line when the response is complete, whatever its outcome.
Prompt and completion text appear only when the server runs with `--log-content`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

ACCESS_LOGGER = "yaie.access"
_access_logger = logging.getLogger(ACCESS_LOGGER)

# nginx's "client closed request": the client disconnected before the response completed
STATUS_CLIENT_CLOSED = 499


@dataclass
class RequestContext:
    """What the access log line reports about one request; None fields are left out of the line."""

    request_id: str
    method: str
    path: str
    started_monotonic: float = field(default_factory=time.monotonic)
    status: int | None = None
    completion_id: str | None = None
    model: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    ttft_s: float | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    prompt: str | None = None
    completion: str | list[str] | None = None

    def record(self) -> dict[str, Any]:
        """The log line's fields, in a stable order."""
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "event": "request",
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "latency_s": round(time.monotonic() - self.started_monotonic, 6),
        }
        optional = {
            "id": self.completion_id, "model": self.model, "stream": self.stream,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
            "finish_reason": ",".join(self.finish_reasons) or None,
            "error": self.error, "prompt": self.prompt, "completion": self.completion,
        }
        line.update((k, v) for k, v in optional.items() if v is not None)
        return line


def write_access_log(context: RequestContext) -> None:
    if _access_logger.isEnabledFor(logging.INFO):
        _access_logger.info(json.dumps(context.record(), ensure_ascii=False))


def configure_logging(level: str) -> None:
    """Plain lines for the server's own logs; bare JSON lines for the access log (both on stderr)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _access_logger.handlers[:] = [handler]
    _access_logger.propagate = False
    _access_logger.setLevel(logging.INFO)
