"""Core value types shared by every layer: sampling parameters, the engine's request, and its outputs.

Stdlib only. A `Request` is a counter: `num_computed_tokens` catches up to `num_tokens` (prompt + output);
there is no prefill or decode phase. The scheduler and KV-cache manager read and advance these counters.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Literal


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    TIMEOUT = "timeout"


StructuredKind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]
STRUCTURED_KINDS: tuple[str, ...] = ("json_object", "json_schema", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredSpec:
    """A constraint on a request's output, enforced token by token by a grammar (see yaie.structured).

    `payload` by kind: json_object: "" (any JSON object); json_schema: the schema as canonical JSON (sorted
    keys, no spaces), so equal schemas share one compiled grammar; regex: the pattern; choice: a JSON list
    of the allowed strings; grammar: an llguidance Lark grammar.
    """

    kind: StructuredKind
    payload: str = ""

    def __post_init__(self) -> None:
        _check(self.kind in STRUCTURED_KINDS, "structured",
               f"kind must be one of {', '.join(STRUCTURED_KINDS)}, got {self.kind!r}")
        _check(self.kind == "json_object" or bool(self.payload), "structured",
               f"a {self.kind} constraint needs a payload")


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Validated on construction; invalid values raise ValueError naming the field.

    temperature == 0 is greedy. top_k None/0 = off; top_p 1.0 = off; min_p 0 = off.
    max_tokens None = up to the context window. logprobs None = none; k >= 0 = the sampled token's logprob
    plus the top-k alternatives. `seed` makes the request's samples reproducible whatever else is batched.
    `structured` None = free text; otherwise only tokens its grammar allows are sampled, and the request
    finishes ("stop") as soon as the grammar is complete.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured: StructuredSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check(isinstance(self.n, int) and self.n >= 1, "n", f"must be an integer >= 1, got {self.n}")
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k is None or self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        _check(0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty",
               f"must be in [-2, 2], got {self.frequency_penalty}")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty",
               f"must be in [-2, 2], got {self.presence_penalty}")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens",
               f"must be >= 1, got {self.max_tokens}")
        _check(self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        _check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs",
               f"must be in [0, 20], got {self.logprobs}")
        _check(all(s for s in self.stop), "stop", "must not contain empty strings")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidParameterError(param, f"{param} {message}")


class InvalidParameterError(ValueError):
    """A ValueError that names the offending parameter (`param`), for the HTTP layer's error body."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's logprob, its rank in the distribution (1 = most likely) and the top alternatives."""

    token_id: int
    logprob: float
    rank: int
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass
class RequestTimes:
    """Timestamps (time.monotonic seconds) taken inside the engine, so queue/prefill/decode time separate."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None


@dataclass(eq=False)
class Request:
    """One sequence in the engine. `all_token_ids` is prompt + output; the engine computes their KV in order.

    Invariant: 0 <= num_computed_tokens <= num_tokens. A request needs a sample when, after this step's
    chunk, num_computed_tokens == num_tokens. On preemption num_computed_tokens resets to 0 (recompute).
    `priority`: lower value = served first (as in vLLM). `group_id` links the n samples of one prompt.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    max_model_len: int = 2048
    priority: int = 0
    group_id: str | None = None
    sample_index: int = 0
    times: RequestTimes = field(default_factory=RequestTimes)
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int | None = None
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def max_output_tokens(self) -> int:
        """Output cap: max_tokens, and never past the context window."""
        room = self.max_model_len - self.num_prompt_tokens
        limit = self.sampling_params.max_tokens
        return room if limit is None else min(limit, room)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_output_token(self, token_id: int, logprob: TokenLogprob | None = None) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)


@dataclass
class CompletionOutput:
    """One of the n samples of a request. In streaming (delta) mode text/token_ids/logprobs are the new part."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    last_token_time: float | None
    finished_time: float | None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    """What the engine returns for a request: cumulative (offline) or a delta (async streaming)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
