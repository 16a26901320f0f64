"""Tool (function) calling for /v1/chat/completions: prompt rendering, output constraint, output parsing.

Wire format of a call in the model's output (Hermes / Qwen style, which templates with tool support use):

    <tool_call>
    {"name": "<function name>", "arguments": {<arguments object>}}
    </tool_call>

one block per call, blocks separated by a newline. Text outside blocks is the message content.

Rendering: when the model's chat template takes `tools`, tools and tool messages go through the template
unchanged. Otherwise (e.g. SmolLM2) we use this documented system-prompt format: a system message (merged
into the conversation's own system message, if any) lists the tools as JSON inside <tools></tools> and asks
for the block format above; an assistant message's tool_calls are written as those blocks; and `role: "tool"`
results become a user turn holding one <tool_response>...</tool_response> block per result.

tool_choice: "none" renders no tools; "auto" lets the model choose and parses what it wrote; "required" and a
named function constrain the output with a grammar (one %json sub-grammar per allowed function, its
parameters schema as the arguments), so every call is valid JSON for its function's parameters. Object
schemas there allow no properties they do not list (as with `strict: true`): a small model otherwise pads the
arguments with made-up keys.
parallel_tool_calls=false allows exactly one call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any

from yaie.server.protocol import ChatResponseMessage, DeltaMessage, FinishReasonName
from yaie.server.protocol_tools import DeltaFunction, DeltaToolCall, ToolCall, ToolCallFunction
from yaie.structured.specs import JSON_OPTIONS, check_json_schema, close_objects
from yaie.types import InvalidParameterError, SamplingParams, StructuredSpec

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

TOOLS_PROMPT = (
    "You can call functions to help with the user's request. The functions, as JSON schemas:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one block per call, each a JSON object with the function's name and "
    "its arguments:\n" + TOOL_CALL_OPEN + '\n{{"name": "<function name>", "arguments": {{<arguments>}}}}\n'
    + TOOL_CALL_CLOSE
)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, serialised

def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolSetup:
    """How one chat request uses its tools. `named` is the forced function (tool_choice names one)."""

    tools: tuple[dict[str, Any], ...]  # OpenAI tool objects: {"type": "function", "function": {...}}
    mode: str  # "auto" | "required" | "named"
    named: str | None
    parallel: bool

    @classmethod
    def from_request(cls, tools: list[Any] | None, tool_choice: Any, parallel: bool | None) -> ToolSetup | None:
        """None when the request has no tools or tool_choice is "none". Raises InvalidParameterError."""
        choice = tool_choice if isinstance(tool_choice, str | type(None)) else tool_choice.model_dump()
        tool_dicts = [t.model_dump(exclude_none=True) for t in tools or []]
        if not tool_dicts:
            if choice not in (None, "none", "auto"):
                raise InvalidParameterError("tool_choice", "tool_choice requires tools")
            return None
        if choice == "none":
            return None
        names = _check_tools(tool_dicts)
        named = None if isinstance(choice, str | type(None)) else choice["function"]["name"]
        if named is not None and named not in names:
            raise InvalidParameterError("tool_choice", f"tool_choice names {named!r}, which is not in tools")
        mode = "named" if named is not None else (choice or "auto")
        return cls(tuple(tool_dicts), mode, named, parallel is not False)

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    def constraint(self) -> StructuredSpec | None:
        """The grammar forcing tool calls ("required" / named), or None for "auto"."""
        if self.mode == "auto":
            return None
        functions = [t["function"] for t in self.tools if self.named in (None, t["function"]["name"])]
        rules = [f"call_{i}: %json {json.dumps(_call_schema(f), ensure_ascii=False)}"
                 for i, f in enumerate(functions)]
        alternatives = " | ".join(f"call_{i}" for i in range(len(functions)))
        repeat = ' ("\\n" tool_call)*' if self.parallel and self.named is None else ""
        lark = "\n".join([f"start: tool_call{repeat}",
                          f'tool_call: "{TOOL_CALL_OPEN}\\n" ({alternatives}) "\\n{TOOL_CALL_CLOSE}"', *rules])
        return StructuredSpec("grammar", lark)

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.names, self.parallel)


def _check_tools(tools: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for index, tool in enumerate(tools):
        function = tool["function"]
        name = function["name"]
        if not _NAME_PATTERN.match(name):
            raise InvalidParameterError(f"tools[{index}].function.name",
                                        f"function names must match [A-Za-z0-9_-]{{1,64}}, got {name!r}")
        if name in names:
            raise InvalidParameterError(f"tools[{index}].function.name", f"duplicate function name {name!r}")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None:
            check_json_schema(json.dumps(parameters), f"tools[{index}].function.parameters")
    return names


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of one call block's body: {"name": <const>, "arguments": <parameters>}."""
    parameters = close_objects(function.get("parameters") or {"type": "object", "properties": {}})
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False, "x-guidance": JSON_OPTIONS}


class ToolCallParser:
    """Splits the model's output, fed incrementally, into content and complete tool calls.

    Text that might begin a call block is held back until it is known not to; whitespace between calls is
    dropped. A block that is not a valid call of a known function stays in the content. With
    parallel=False, blocks after the first call are content.
    """

    def __init__(self, names: set[str], parallel: bool = True) -> None:
        self._names = names
        self._parallel = parallel
        self._buffer = ""
        self._in_block = False
        self._held_space = ""
        self.num_calls = 0

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ParsedCall]]:
        """(content to emit now, calls completed now). `final`: the output ended; flush everything."""
        self._buffer += text
        content: list[str] = []
        calls: list[ParsedCall] = []
        while self._buffer:
            if not self._in_block and not self._take_content(content, final):
                break
            if self._in_block and not self._take_block(content, calls, final):
                break
        return self._emit("".join(content), final), calls

    def _take_content(self, content: list[str], final: bool) -> bool:
        """Move the text before the next block opening to `content`; False when waiting for more text."""
        start = self._buffer.find(TOOL_CALL_OPEN) if self._accepts_calls else -1
        if start >= 0:
            content.append(self._buffer[:start])
            self._buffer = self._buffer[start + len(TOOL_CALL_OPEN):]
            self._in_block = True
            return True
        keep = 0 if final or not self._accepts_calls else _partial_suffix(self._buffer, TOOL_CALL_OPEN)
        content.append(self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return False

    def _take_block(self, content: list[str], calls: list[ParsedCall], final: bool) -> bool:
        end = self._buffer.find(TOOL_CALL_CLOSE)
        if end < 0 and not final:
            return False
        body = self._buffer if end < 0 else self._buffer[:end]
        self._buffer = "" if end < 0 else self._buffer[end + len(TOOL_CALL_CLOSE):]
        self._in_block = False
        call = self._parse(body)
        if call is None:
            content.append(TOOL_CALL_OPEN + body + ("" if end < 0 else TOOL_CALL_CLOSE))
        else:
            calls.append(call)
            self.num_calls += 1
        return True

    @property
    def _accepts_calls(self) -> bool:
        return self._parallel or self.num_calls == 0

    def _parse(self, body: str) -> ParsedCall | None:
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or value.get("name") not in self._names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))

    def _emit(self, content: str, final: bool) -> str:
        """Hold trailing whitespace back (it may only separate calls); drop it at the end after calls."""
        text = self._held_space + content
        body = text.rstrip()
        self._held_space = text[len(body):]
        if final:
            held, self._held_space = self._held_space, ""
            return body + ("" if self.num_calls else held)
        return body


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


def render_tool_conversation(conversation: list[dict[str, Any]], setup: ToolSetup | None,
                             template_takes_tools: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools argument for the template). See the module docstring for the two formats."""
    if template_takes_tools:
        return [_with_argument_objects(m) for m in conversation], list(setup.tools) if setup else None
    messages: list[dict[str, Any]] = []
    for message in conversation:
        if message["role"] == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if messages and messages[-1].get("is_tool_response"):
                messages[-1]["content"] += "\n" + block
            else:
                messages.append({"role": "user", "content": block, "is_tool_response": True})
        elif message["role"] == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call) for call in message["tool_calls"]]
            text = "\n".join(([message["content"]] if message.get("content") else []) + blocks)
            messages.append({"role": "assistant", "content": text})
        else:
            messages.append(dict(message))
    for message in messages:
        message.pop("is_tool_response", None)
    if setup is not None:
        prompt = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in setup.tools))
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}".strip()}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages, None


def _call_block(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = _argument_object(function.get("arguments"))
    body = json.dumps({"name": function.get("name", ""), "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _with_argument_objects(message: dict[str, Any]) -> dict[str, Any]:
    """Templates expect tool_calls[].function.arguments as an object; OpenAI sends a JSON string."""
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {**(c.get("function") or {}),
                                "arguments": _argument_object((c.get("function") or {}).get("arguments"))}}
             for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _argument_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}


def with_tool_constraint(params: SamplingParams, setup: ToolSetup | None) -> SamplingParams:
    """`params` constrained to tool calls when tool_choice is "required" or names a function."""
    spec = setup.constraint() if setup is not None else None
    if spec is None:
        return params
    if params.structured is not None:
        raise InvalidParameterError("tool_choice", f"tool_choice={setup.mode!r} cannot be combined with "  # type: ignore[union-attr]
                                                   "response_format or guided_* constraints")
    return replace(params, structured=spec)


def tool_message(text: str, finish_reason: str | None, setup: ToolSetup | None
                 ) -> tuple[ChatResponseMessage, FinishReasonName]:
    """A whole (non-streamed) answer as a message with tool_calls, and its finish reason."""
    finish: Any = finish_reason or "stop"
    if setup is None:
        return ChatResponseMessage(content=text), finish
    content, calls = setup.parser().feed(text, final=True)
    if not calls:
        return ChatResponseMessage(content=content), finish
    tool_calls = [ToolCall(id=new_call_id(), function=ToolCallFunction(name=c.name, arguments=c.arguments))
                  for c in calls]
    return ChatResponseMessage(content=content or None, tool_calls=tool_calls), _finish(finish, len(calls))


def tool_delta(parser: ToolCallParser, text: str, finish_reason: str | None
               ) -> tuple[DeltaMessage, FinishReasonName | None]:
    """One streamed delta through the parser: content outside calls, and each call once it is complete
    (a single delta.tool_calls entry with id, name and the whole arguments, which the SDK assembles)."""
    first_index = parser.num_calls
    content, calls = parser.feed(text, final=finish_reason is not None)
    tool_calls = [DeltaToolCall(index=first_index + i, id=new_call_id(), type="function",
                                function=DeltaFunction(name=c.name, arguments=c.arguments))
                  for i, c in enumerate(calls)] or None
    delta = DeltaMessage(content=content or None, tool_calls=tool_calls)
    finish: Any = finish_reason
    return delta, _finish(finish, parser.num_calls) if finish is not None else None


def _finish(finish_reason: FinishReasonName, num_calls: int) -> FinishReasonName:
    return "tool_calls" if finish_reason == "stop" and num_calls else finish_reason
