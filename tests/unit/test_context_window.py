"""Context strategies on a word-counting renderer: what is dropped, what is kept, and the reports."""

from __future__ import annotations

import pytest

from yaie.engine.errors import PromptTooLongError
from yaie.server.context_window import fit_messages, prompt_budget


def render(messages: list[dict]) -> list[int]:
    """One 'token' per word plus 2 per message (the template's role markers)."""
    return [0] * sum(len((m.get("content") or "").split()) + 2 for m in messages)


def tail_words(text: str, num_tokens: int) -> str:
    return " ".join(text.split()[-num_tokens:])


def message(role: str, num_words: int, tag: str) -> dict:
    return {"role": role, "content": " ".join(f"{tag}{i}" for i in range(num_words))}


CONVERSATION = [message("system", 3, "s"), message("user", 10, "u1"), message("assistant", 10, "a1"),
                message("user", 10, "u2"), message("assistant", 10, "a2"), message("user", 5, "u3")]
TOTAL = 3 + 10 * 4 + 5 + 2 * 6  # 60 tokens


def test_budget_keeps_room_for_the_output() -> None:
    assert prompt_budget(1024, 100) == 924
    assert prompt_budget(1024, None) == 1024 - 256
    assert prompt_budget(100, None) == 75


def test_a_fitting_prompt_is_untouched_whatever_the_strategy() -> None:
    for strategy in ("error", "truncate_oldest", "sliding_window"):
        ids, truncation = fit_messages(CONVERSATION, render, TOTAL, strategy, tail_words)
        assert len(ids) == TOTAL and truncation is None


def test_error_strategy_leaves_the_prompt_for_the_engine_to_reject() -> None:
    ids, truncation = fit_messages(CONVERSATION, render, 20, "error", tail_words)
    assert len(ids) == TOTAL and truncation is None


def test_truncate_oldest_drops_whole_old_messages_keeping_system_and_last_user() -> None:
    ids, truncation = fit_messages(CONVERSATION, render, 40, "truncate_oldest", tail_words)
    # dropping u1 and a1 (24 tokens) leaves 36 <= 40
    assert len(ids) == 36 and truncation is not None
    assert (truncation.dropped_messages, truncation.truncated_messages, truncation.dropped_tokens) == (2, 0, 24)
    assert "dropped_messages=2" in truncation.header_value()
    with pytest.raises(PromptTooLongError, match="does not fit"):
        fit_messages(CONVERSATION, render, 10, "truncate_oldest", tail_words)


def test_truncate_oldest_drops_tool_results_with_their_call() -> None:
    conversation = [message("user", 10, "u1"), {"role": "assistant", "content": "", "tool_calls": [{}]},
                    message("tool", 10, "t"), message("user", 3, "u2")]
    kept_ids, truncation = fit_messages(conversation, render, 20, "truncate_oldest", tail_words)
    assert truncation is not None and truncation.dropped_messages == 1 and len(kept_ids) == 19
    kept_ids, truncation = fit_messages(conversation, render, 10, "truncate_oldest", tail_words)
    assert truncation is not None and truncation.dropped_messages == 3 and len(kept_ids) == 5


def test_sliding_window_keeps_the_most_recent_tokens() -> None:
    kept: list[list[dict]] = []

    def recording_render(messages: list[dict]) -> list[int]:
        kept.append(messages)
        return render(messages)

    ids, truncation = fit_messages(CONVERSATION, recording_render, 40, "sliding_window", tail_words)
    assert len(ids) == 40 and truncation is not None
    # system (5) + u3, a2, u2 (7 + 12 + 12) = 36: a1 keeps its last 2 words (4 tokens), u1 is dropped
    assert (truncation.dropped_messages, truncation.truncated_messages) == (1, 1)
    final = kept[-1]
    assert [m["role"] for m in final] == ["system", "assistant", "user", "assistant", "user"]
    assert final[1]["content"] == tail_words(CONVERSATION[2]["content"], 2)
    assert final[2:] == CONVERSATION[3:]


def test_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown context strategy"):
        fit_messages(CONVERSATION, render, 10, "summarize", tail_words)
