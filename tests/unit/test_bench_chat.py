"""`yaie chat`: history, commands, stats, and the remote backend through the official `openai` client talking to
a scripted OpenAI-compatible server (an httpx transport, no sockets)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from yaie.chat import (
    ChatHistory,
    ChatSettings,
    Command,
    RemoteBackend,
    ReplyStats,
    parse_command,
    run_chat,
)


def test_history_orders_system_then_turns_and_reset_keeps_system() -> None:
    history = ChatHistory("be brief")
    history.add_user("hi")
    history.add_assistant("hello")
    history.add_user("how are you?")
    assert history.messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]
    history.reset()
    assert history.messages() == [{"role": "system", "content": "be brief"}]
    assert ChatHistory().messages() == []


def test_history_enforces_alternation_and_drops_a_failed_turn() -> None:
    history = ChatHistory()
    with pytest.raises(ValueError, match="needs a user message"):
        history.add_assistant("orphan")
    history.add_user("one")
    with pytest.raises(ValueError, match="already waiting"):
        history.add_user("two")
    history.drop_pending_user()
    assert history.messages() == []
    history.drop_pending_user()  # nothing pending: no-op
    history.add_user("again")
    history.add_assistant("ok")
    history.drop_pending_user()  # the last turn is a reply: kept
    assert len(history.messages()) == 2


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   ", None),
        ("hello there", Command(None, "hello there")),
        ("/exit", Command("exit")),
        ("/QUIT", Command("exit")),
        ("/reset", Command("reset")),
        ("/system  You are terse. ", Command("system", "You are terse.")),
        ("/help", Command("help")),
        ("/frobnicate", Command("unknown")),
        ("//etc/passwd is a file", Command(None, "/etc/passwd is a file")),
    ],
)
def test_parse_command(line: str, expected: Command | None) -> None:
    assert parse_command(line) == expected


def test_reply_stats() -> None:
    stats = ReplyStats(num_tokens=11, ttft_s=0.2, elapsed_s=1.2)
    assert stats.tokens_per_s == pytest.approx(10.0)
    assert stats.describe() == "[11 tokens, 1.20 s, TTFT 200 ms, 10.0 tok/s]"
    assert ReplyStats(1, 0.1, 0.1).tokens_per_s is None
    assert ReplyStats(0, None, 0.5).describe() == "[0 tokens, 0.50 s]"


@pytest.mark.parametrize(("kwargs", "param"), [({"max_tokens": 0}, "max_tokens"),
                                              ({"temperature": -0.1}, "temperature"),
                                              ({"top_p": 0.0}, "top_p")])
def test_settings_validation(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        ChatSettings(**kwargs)


@dataclass
class ScriptedChatServer:
    """Replies "reply N" in two content chunks, then usage; answers 400 to a message containing "too long"."""

    bodies: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "scripted", "object": "model",
                                                                         "created": 0, "owned_by": "test"}]})
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.bodies.append(body)
        if "too long" in body["messages"][-1]["content"]:
            error = {"message": "prompt too long", "type": "BadRequestError", "param": "input_tokens", "code": 400}
            return httpx.Response(400, json={"error": error})
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"".join(self._events(len(self.bodies))))

    def _events(self, number: int) -> Iterator[bytes]:
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "scripted"}
        deltas = [{"role": "assistant", "content": ""}, {"content": "reply "}, {"content": str(number)}]
        for index, delta in enumerate(deltas):
            finish = "stop" if index == len(deltas) - 1 else None
            yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        yield _sse({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}})
        yield b"data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _backend(server: ScriptedChatServer, model: str | None = None) -> RemoteBackend:
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    return RemoteBackend("http://scripted:8000", api_key=None, model=model, http_client=client)


def _script(*lines: str):
    pending = list(lines)

    def read_line(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read_line


def test_remote_backend_streams_and_reports_usage() -> None:
    server = ScriptedChatServer()
    backend = _backend(server)
    assert backend.model_name == "scripted"
    deltas = list(backend.stream_reply([{"role": "user", "content": "hi"}], ChatSettings(max_tokens=7)))
    assert "".join(d.text for d in deltas) == "reply 1"
    assert deltas[-1].completion_tokens == 2
    body = server.bodies[0]
    assert body["stream"] is True and body["max_tokens"] == 7 and body["temperature"] == 0.7
    assert body["stream_options"] == {"include_usage": True}
    assert "top_p" not in body


def test_chat_session_sends_history_and_reset_forgets_it() -> None:
    server = ScriptedChatServer()
    out = io.StringIO()
    code = run_chat(_backend(server, model="m"), ChatSettings(), "sys",
                    read_line=_script("hello", "", "and then?", "/reset", "fresh", "/exit", "never sent"), out=out)
    assert code == 0
    assert [b["model"] for b in server.bodies] == ["m", "m", "m"]
    assert server.bodies[1]["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "reply 1"},
        {"role": "user", "content": "and then?"},
    ]
    assert server.bodies[2]["messages"] == [{"role": "system", "content": "sys"},
                                            {"role": "user", "content": "fresh"}]
    text = out.getvalue()
    assert "reply 1\n" in text and "reply 2\n" in text and "(conversation reset)" in text
    assert "[2 tokens," in text


def test_chat_session_survives_a_server_error_and_drops_the_failed_turn() -> None:
    server = ScriptedChatServer()
    out = io.StringIO()
    code = run_chat(_backend(server), ChatSettings(), read_line=_script("this is too long", "short"), out=out,
                    show_stats=False)
    assert code == 0  # end of input ends the session cleanly
    assert "error: BadRequestError 400" in out.getvalue()
    assert "/reset" in out.getvalue()
    assert server.bodies[1]["messages"] == [{"role": "user", "content": "short"}]


def test_system_command_sets_the_prompt_and_resets() -> None:
    server = ScriptedChatServer()
    run_chat(_backend(server), ChatSettings(), read_line=_script("a", "/system be kind", "b", "/help"),
             out=io.StringIO())
    assert server.bodies[1]["messages"] == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "b"}]
