"""`yaie chat`: an interactive terminal chat.

Two backends behind one small protocol (`ChatBackend.stream_reply(messages, settings) -> Iterator[ReplyDelta]`):
- `--url URL`: a running OpenAI-compatible server (ours, vLLM, llama.cpp, ...) through the official `openai`
  client, streaming the reply token by token (`stream_options.include_usage` gives the real token count).
- no `--url`: the model (default: SmolLM2-135M-Instruct, or `--model PATH`) loaded in this process through
  `yaie.LLM`; the chat template is applied with `LLM.render_chat` and the engine is stepped directly, so the
  reply streams too. One conversation at a time; nothing listens on a port.

The conversation (system prompt + turns) is resent in full each turn, as with any stateless chat API. Commands:
/exit (or /quit, Ctrl-D), /reset (forget the turns, keep the system prompt), /system TEXT, /help; a line
starting with "//" sends the text after the first "/". Ctrl-C while a reply streams stops that reply and keeps
what arrived. Line editing and history come from `readline` where the platform has it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO

Role = Literal["system", "user", "assistant"]
HELP_TEXT = ("commands: /exit (or /quit, Ctrl-D) quit · /reset forget the conversation · /system TEXT set the "
             "system prompt and reset · /help this text · //text sends '/text' · Ctrl-C stops a reply")


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass
class ChatHistory:
    """The conversation sent each turn: the optional system prompt, then alternating user/assistant turns.

    Invariant: `turns` alternates user, assistant, starting with user; a pending user turn (sent, no reply
    yet) is the only way it may end with a user message.
    """

    system_prompt: str | None = None
    turns: list[ChatMessage] = field(default_factory=list)

    def add_user(self, content: str) -> None:
        if self.turns and self.turns[-1].role == "user":
            raise ValueError("a user message is already waiting for its reply")
        self.turns.append(ChatMessage("user", content))

    def add_assistant(self, content: str) -> None:
        if not self.turns or self.turns[-1].role != "user":
            raise ValueError("an assistant reply needs a user message before it")
        self.turns.append(ChatMessage("assistant", content))

    def drop_pending_user(self) -> None:
        """Forget the last user message when its reply failed, so the user can retry."""
        if self.turns and self.turns[-1].role == "user":
            self.turns.pop()

    def reset(self) -> None:
        self.turns.clear()

    def messages(self) -> list[dict[str, str]]:
        """OpenAI-style message dicts, system prompt first."""
        system = [ChatMessage("system", self.system_prompt)] if self.system_prompt else []
        return [{"role": m.role, "content": m.content} for m in system + self.turns]


@dataclass(frozen=True)
class Command:
    """A parsed input line: `name` is None for a message to send (its text in `argument`)."""

    name: Literal["exit", "reset", "system", "help", "unknown"] | None
    argument: str = ""


def parse_command(line: str) -> Command | None:
    """None for a blank line; a command for "/name ..."; else the message to send."""
    text = line.strip()
    if not text:
        return None
    if text.startswith("//"):
        return Command(None, text[1:])
    if not text.startswith("/"):
        return Command(None, text)
    name, _, argument = text[1:].partition(" ")
    aliases: dict[str, Literal["exit", "reset", "system", "help"]] = {
        "exit": "exit", "quit": "exit", "reset": "reset", "clear": "reset", "system": "system", "help": "help",
    }
    return Command(aliases.get(name.lower(), "unknown"), argument.strip())


@dataclass(frozen=True)
class ChatSettings:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class ReplyDelta:
    """A piece of the reply; `completion_tokens` is the reply's total token count once the backend knows it."""

    text: str = ""
    completion_tokens: int | None = None


class ChatBackend(Protocol):
    """Produces a reply to `messages` as deltas; closing the iterator early must stop the generation."""

    model_name: str

    def stream_reply(self, messages: list[dict[str, str]], settings: ChatSettings) -> Iterator[ReplyDelta]: ...


@dataclass
class ReplyStats:
    """Timing of one reply, measured from when the request was sent."""

    num_tokens: int
    ttft_s: float | None
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate after the first token (None with fewer than two tokens)."""
        if self.ttft_s is None or self.num_tokens < 2 or self.elapsed_s <= self.ttft_s:
            return None
        return (self.num_tokens - 1) / (self.elapsed_s - self.ttft_s)

    def describe(self) -> str:
        parts = [f"{self.num_tokens} tokens", f"{self.elapsed_s:.2f} s"]
        if self.ttft_s is not None:
            parts.append(f"TTFT {self.ttft_s * 1000:.0f} ms")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        return "[" + ", ".join(parts) + "]"


class RemoteBackend:
    """A running OpenAI-compatible server, through the official `openai` client."""

    def __init__(self, url: str, api_key: str | None, model: str | None, http_client: Any = None) -> None:
        from openai import OpenAI

        from yaie.bench.serve import api_root

        self._client = OpenAI(base_url=api_root(url) + "/v1", api_key=api_key or "EMPTY", http_client=http_client)
        self.model_name = model or self._first_model()

    def _first_model(self) -> str:
        from openai import APIConnectionError

        try:
            models = self._client.models.list().data
        except APIConnectionError as exc:
            raise ConnectionError(f"cannot reach {self._client.base_url}models: {exc}") from exc
        if not models:
            raise ValueError("the server lists no model at /v1/models; pass --model")
        return models[0].id

    def stream_reply(self, messages: list[dict[str, str]], settings: ChatSettings) -> Iterator[ReplyDelta]:
        extra: dict[str, Any] = {} if settings.top_p is None else {"top_p": settings.top_p}
        stream = self._client.chat.completions.create(
            model=self.model_name, messages=messages, stream=True, max_tokens=settings.max_tokens,
            temperature=settings.temperature, stream_options={"include_usage": True}, **extra,  # type: ignore[arg-type]
        )
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield ReplyDelta(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    yield ReplyDelta(completion_tokens=chunk.usage.completion_tokens)
        finally:
            stream.close()


class LocalBackend:
    """The model in this process: the chat template through `LLM.render_chat`, then the engine stepped directly
    (`LLMEngine.add_request` / `step`) so the reply streams as the engine produces it. Ctrl-C is deferred to a
    step boundary, then the request is aborted (its KV blocks freed) and the interrupt re-raised."""

    def __init__(self, model: str | None) -> None:
        from yaie import LLM

        self._llm = LLM(model=model)
        self.model_name = self._llm.engine.model_name
        self._num_requests = 0

    def stream_reply(self, messages: list[dict[str, str]], settings: ChatSettings) -> Iterator[ReplyDelta]:
        from yaie import SamplingParams

        top_p = 1.0 if settings.top_p is None else settings.top_p
        params = SamplingParams(temperature=settings.temperature, top_p=top_p, max_tokens=settings.max_tokens)
        engine = self._llm.engine
        request_id = f"chat-{self._num_requests}"
        self._num_requests += 1
        engine.add_request(request_id, self._llm.render_chat(messages), params)
        num_tokens, is_finished = 0, False
        with _deferred_interrupt() as interrupted:
            try:
                while not is_finished and not interrupted.is_set() and engine.has_unfinished_requests():
                    for delta in engine.step():
                        if delta.request_id != request_id:
                            continue
                        num_tokens += len(delta.outputs[0].token_ids)
                        is_finished = delta.finished
                        if delta.outputs[0].text:
                            yield ReplyDelta(delta.outputs[0].text)
            finally:
                if not is_finished:
                    engine.abort(request_id)
        if interrupted.is_set():
            raise KeyboardInterrupt
        yield ReplyDelta(completion_tokens=num_tokens)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """While active (main thread only), Ctrl-C sets the yielded flag instead of raising mid-step."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_turn(
    backend: ChatBackend, messages: list[dict[str, str]], settings: ChatSettings, out: TextIO
) -> tuple[str, ReplyStats]:
    """Print the reply as it arrives; returns its text and stats. Ctrl-C stops it early (what came is kept)."""
    pieces: list[str] = []
    num_chunks, usage_tokens, ttft_s = 0, None, None
    start_s = time.perf_counter()
    deltas = backend.stream_reply(messages, settings)
    try:
        for delta in deltas:
            if delta.text:
                if ttft_s is None:
                    ttft_s = time.perf_counter() - start_s
                num_chunks += 1
                pieces.append(delta.text)
                out.write(delta.text)
                out.flush()
            if delta.completion_tokens is not None:
                usage_tokens = delta.completion_tokens
    except KeyboardInterrupt:
        out.write(" [stopped]")
    finally:
        close = getattr(deltas, "close", None)
        if close is not None:
            close()
        out.write("\n")
    num_tokens = usage_tokens if usage_tokens is not None else num_chunks
    return "".join(pieces), ReplyStats(num_tokens, ttft_s, time.perf_counter() - start_s)


def run_chat(
    backend: ChatBackend, settings: ChatSettings, system_prompt: str | None = None,
    read_line: Callable[[str], str] = input, out: TextIO = sys.stdout, show_stats: bool = True,
) -> int:
    """The read-reply loop; returns the exit code. `read_line` raises EOFError at end of input."""
    history = ChatHistory(system_prompt)
    out.write(f"yaie chat · {backend.model_name} · /help for commands, /exit to quit\n")
    while True:
        try:
            command = parse_command(read_line(">>> "))
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        if command is None:
            continue
        if command.name == "exit":
            return 0
        if command.name is not None:
            _apply_command(command, history, out)
            continue
        history.add_user(command.argument)
        try:
            reply, stats = stream_turn(backend, history.messages(), settings, out)
        except Exception as exc:  # a server error must not end the session
            history.drop_pending_user()
            out.write(f"error: {_describe_error(exc)}\n")
            continue
        history.add_assistant(reply)
        if show_stats:
            out.write(_dim(stats.describe(), out) + "\n")


def _apply_command(command: Command, history: ChatHistory, out: TextIO) -> None:
    if command.name == "reset":
        history.reset()
        out.write("(conversation reset)\n")
    elif command.name == "system":
        history.system_prompt = command.argument or None
        history.reset()
        out.write(f"(system prompt {'set' if command.argument else 'cleared'}; conversation reset)\n")
    elif command.name == "help":
        out.write(HELP_TEXT + "\n")
    else:
        out.write(f"unknown command; {HELP_TEXT}\n")


def _describe_error(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    status = getattr(exc, "status_code", None)
    hint = " (the conversation may be too long for the context window: /reset)" if status == 400 else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {message}{hint}"


def _dim(text: str, out: TextIO) -> str:
    return f"\033[2m{text}\033[0m" if getattr(out, "isatty", lambda: False)() else text


def add_chat_parser(subparsers: Any) -> None:
    """Register `yaie chat` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "chat", help="interactive terminal chat (a running server, or the local model in-process)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=None, help="server root, e.g. http://127.0.0.1:8000 (default: in-process)")
    parser.add_argument("--model", default=None,
                        help="with --url: the model name (default: first of /v1/models); else a .gguf or HF dir")
    parser.add_argument("--api-key", default=os.environ.get("YAIE_API_KEY") or os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--no-stats", action="store_true", help="do not print token counts and timings")
    parser.set_defaults(func=chat_command)


def chat_command(args: argparse.Namespace) -> int:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    try:
        settings = ChatSettings(args.max_tokens, args.temperature, args.top_p)
        backend: ChatBackend
        if args.url:
            backend = RemoteBackend(args.url, args.api_key, args.model)
        else:
            print("loading the model in-process ...", flush=True)
            backend = LocalBackend(args.model)
    except Exception as exc:  # unreachable server, bad model path, bad value: one clear line
        print(f"yaie chat: error: {_describe_error(exc)}", file=sys.stderr)
        return 2
    return run_chat(backend, settings, args.system, show_stats=not args.no_stats)
