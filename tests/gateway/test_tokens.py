"""Worst-case completion bounds used for TPM reservations and budget holds."""

from yaie.gateway.tokens import _embedding, _max_new


def test_completion_bound_is_the_context_remainder_or_max_tokens() -> None:
    assert _max_new(None, 100, 512) == 412
    assert _max_new(16, 100, 512) == 16
    assert _max_new(1000, 100, 512) == 412
    assert _max_new(None, 600, 512) == 512  # the server may truncate the prompt: the whole context is the bound
    assert _max_new(8, 600, 512) == 8


def test_embedding_bound_counts_characters_plus_special_tokens() -> None:
    assert _embedding({"input": "hello"}) == 7
    assert _embedding({"input": ["ab", "cde"]}) == 9
    assert _embedding({"input": [1, 2, 3]}) == 3
    assert _embedding({"input": [[1, 2], [3]]}) == 3
