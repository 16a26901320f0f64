"""Context-window strategies for chat requests whose rendered prompt does not fit, measured in tokens.

The budget is the context window minus the room kept for the output: max_tokens when the request sets it,
else DEFAULT_OUTPUT_RESERVE_TOKENS (at most a quarter of the window). Strategies:
  error            the prompt is used as is; the engine answers 400 when it does not fit (the default).
  truncate_oldest  drop the oldest non-system messages (an assistant message together with the tool results
                   that follow it) until the prompt fits, keeping every system message and the last user
                   message with what follows it; 400 when even that does not fit.
  sliding_window   keep the system messages and the most recent tokens: whole messages from the newest back,
                   then the tail of the next older message's content to fill the budget; older ones dropped.
Every candidate is rendered with the real chat template, so the counts include the template's tokens.
Finding how much to drop is a binary search over renders (dropping more never makes the prompt longer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from yaie.engine.errors import PromptTooLongError

ContextStrategy = Literal["error", "truncate_oldest", "sliding_window"]
CONTEXT_STRATEGIES: tuple[str, ...] = ("error", "truncate_oldest", "sliding_window")
DEFAULT_OUTPUT_RESERVE_TOKENS = 256
CONTEXT_HEADER = "X-YAIE-Context-Truncated"

Message = dict[str, Any]
Render = Callable[[list[Message]], list[int]]  # messages -> prompt token ids


@dataclass(frozen=True)
class ContextTruncation:
    """What a strategy removed: whole messages dropped, messages cut (0 or 1), prompt tokens saved."""

    strategy: str
    dropped_messages: int
    truncated_messages: int
    dropped_tokens: int

    def header_value(self) -> str:
        return (f"strategy={self.strategy}; dropped_messages={self.dropped_messages}; "
                f"truncated_messages={self.truncated_messages}; dropped_tokens={self.dropped_tokens}")


def prompt_budget(max_model_len: int, output_limit: int | None) -> int:
    reserve = output_limit if output_limit is not None else min(DEFAULT_OUTPUT_RESERVE_TOKENS, max_model_len // 4)
    return max_model_len - max(1, reserve)


def fit_messages(messages: list[Message], render: Render, budget: int, strategy: str,
                 cut_text: Callable[[str, int], str]) -> tuple[list[int], ContextTruncation | None]:
    """The prompt ids for `messages` under `strategy`, and what was removed (None when nothing was).

    `cut_text(text, num_tokens)` keeps the last num_tokens tokens of a text (sliding_window).
    Raises PromptTooLongError when truncate_oldest cannot fit the kept messages.
    """
    prompt_ids = render(messages)
    if strategy == "error" or len(prompt_ids) <= budget:
        return prompt_ids, None
    if strategy == "truncate_oldest":
        kept, num_dropped = _drop_oldest(messages, render, budget)
        kept_ids = render(kept)
        return kept_ids, ContextTruncation(strategy, num_dropped, 0, len(prompt_ids) - len(kept_ids))
    if strategy == "sliding_window":
        kept, num_dropped, num_cut = _slide(messages, render, budget, cut_text)
        kept_ids = render(kept)
        return kept_ids, ContextTruncation(strategy, num_dropped, num_cut, len(prompt_ids) - len(kept_ids))
    raise ValueError(f"unknown context strategy {strategy!r}; valid: {', '.join(CONTEXT_STRATEGIES)}")


def _drop_oldest(messages: list[Message], render: Render, budget: int) -> tuple[list[Message], int]:
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    units = _droppable_units(messages, last_user)

    def without(num_units: int) -> list[Message]:
        dropped = {i for unit in units[:num_units] for i in unit}
        return [m for i, m in enumerate(messages) if i not in dropped]

    num_units = _smallest_fitting(len(units), lambda k: len(render(without(k))) <= budget)
    if num_units is None:
        raise PromptTooLongError(
            "messages", f"the conversation does not fit the context window even after dropping all "
                        f"{len(units)} older messages: the system prompt and the last user message need "
                        f"{len(render(without(len(units))))} tokens, the budget is {budget}")
    return without(num_units), sum(len(unit) for unit in units[:num_units])


def _droppable_units(messages: list[Message], last_user: int) -> list[list[int]]:
    """Indices of droppable messages, oldest first, a message grouped with the tool results after it."""
    units: list[list[int]] = []
    for index, message in enumerate(messages[:last_user]):
        if message["role"] == "system":
            continue
        if message["role"] == "tool" and units:
            units[-1].append(index)
        else:
            units.append([index])
    return units


def _slide(messages: list[Message], render: Render, budget: int, cut_text: Callable[[str, int], str]
           ) -> tuple[list[Message], int, int]:
    system = [m for m in messages if m["role"] == "system"]
    others = [m for m in messages if m["role"] != "system"]

    def recent(num_kept: int) -> list[Message]:
        return system + others[len(others) - num_kept:] if num_kept else list(system)

    num_kept = _largest_fitting(len(others), lambda k: len(render(recent(k))) <= budget)
    if num_kept == len(others):
        return recent(num_kept), 0, 0
    partial = others[len(others) - num_kept - 1]
    content = partial.get("content") or ""

    def with_tail(num_tokens: int) -> list[Message]:
        return [*system, {**partial, "content": cut_text(content, num_tokens)}, *recent(num_kept)[len(system):]]

    num_tokens = _largest_fitting(len(content), lambda t: t > 0 and len(render(with_tail(t))) <= budget)
    if num_tokens == 0:
        return recent(num_kept), len(others) - num_kept, 0
    return with_tail(num_tokens), len(others) - num_kept - 1, 1


def _smallest_fitting(upper: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest k in [0, upper] with fits(k), for a monotone fits; None when none fits."""
    if not fits(upper):
        return None
    low, high = 0, upper
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _largest_fitting(upper: int, fits: Callable[[int], bool]) -> int:
    """The largest k in [0, upper] with fits(k) (0 when only 0 does), for a monotone fits."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low

