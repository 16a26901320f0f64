"""Incremental detokenization and stop-string detection for one sample of a request.

Tokens arrive one step at a time. A stream decoder turns them into text without ever emitting a partial
UTF-8 character (a byte-level BPE token may hold half of an emoji): `tokenizers.decoders.DecodeStream` for
fast tokenizers, else a prefix/read-offset window over `tokenizer.decode`. Both start from a few prompt tokens
of context, so decoders that strip a leading space from the first token (Metaspace) stay correct.

Invariants of `IncrementalDetokenizer`:
- `output_text` never contains a matched stop string (unless include_stop_str_in_output), nor anything after it;
- the concatenation of every `get_delta` result equals `output_text` once `get_delta(finished=True)` ran;
- an unfinished stream never shows a tail that could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from yaie.types import SamplingParams

try:
    from tokenizers.decoders import DecodeStream
except ImportError:  # tokenizers < 0.21 has no DecodeStream
    DecodeStream = None

_REPLACEMENT_CHAR = "\ufffd"
_MIN_CONTEXT_TOKENS = 4
_MAX_CONTEXT_TOKENS = 24


class StreamDecoder(Protocol):
    """Turns token ids, one at a time, into text: `step` returns the newly complete text ('' if none yet)."""

    def step(self, token_id: int) -> str: ...


class FastStreamDecoder:
    """A `DecodeStream` over the tokenizer's Rust backend (fast tokenizers only).

    DecodeStream refuses some token sequences (it raises when the decoded prefix changes under it); from then
    on the sample continues with an `OffsetStreamDecoder`, starting at the first token not yet emitted.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, context_ids: list[int], skip_special_tokens: bool
    ) -> None:
        assert DecodeStream is not None
        self._tokenizer = tokenizer
        self._backend: Tokenizer = tokenizer.backend_tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(ids=context_ids, skip_special_tokens=skip_special_tokens)
        self._token_ids = list(context_ids)
        self._num_emitted_tokens = len(context_ids)  # _token_ids[:this] are fully in the emitted text
        self._fallback: OffsetStreamDecoder | None = None

    def step(self, token_id: int) -> str:
        if self._fallback is not None:
            return self._fallback.step(token_id)
        self._token_ids.append(token_id)
        try:
            text = self._stream.step(self._backend, token_id)
        except Exception:  # tokenizers raises a bare Exception ("Invalid prefix encountered")
            emitted, pending = (
                self._token_ids[: self._num_emitted_tokens],
                self._token_ids[self._num_emitted_tokens :],
            )
            self._fallback = OffsetStreamDecoder(self._tokenizer, emitted, self._skip_special_tokens)
            return "".join(self._fallback.step(pending_id) for pending_id in pending)
        if text is None:
            return ""
        self._num_emitted_tokens = len(self._token_ids)
        return text


class OffsetStreamDecoder:
    """Works with any tokenizer: decodes the window [prefix_offset:] and emits what follows the already read part.

    Text is emitted only when the window's decoding does not end in U+FFFD (an incomplete UTF-8 sequence).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, context_ids: list[int], skip_special_tokens: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._token_ids = list(context_ids)
        self._prefix_offset = 0
        self._read_offset = len(context_ids)

    def step(self, token_id: int) -> str:
        self._token_ids.append(token_id)
        read_text = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        window_text = self._decode(self._token_ids[self._prefix_offset :])
        if len(window_text) <= len(read_text) or window_text.endswith(_REPLACEMENT_CHAR):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        return window_text[len(read_text) :]

    def _decode(self, token_ids: list[int]) -> str:
        text = self._tokenizer.decode(
            token_ids, skip_special_tokens=self._skip_special_tokens, clean_up_tokenization_spaces=False
        )
        assert isinstance(text, str)
        return text


def make_stream_decoder(
    tokenizer: PreTrainedTokenizerBase, prompt_token_ids: Sequence[int], skip_special_tokens: bool
) -> StreamDecoder:
    """A `FastStreamDecoder` when the tokenizer has a Rust backend and DecodeStream exists, else offsets."""
    context_ids = _prompt_context(tokenizer, prompt_token_ids)
    if DecodeStream is not None and isinstance(getattr(tokenizer, "backend_tokenizer", None), Tokenizer):
        return FastStreamDecoder(tokenizer, context_ids, skip_special_tokens)
    return OffsetStreamDecoder(tokenizer, context_ids, skip_special_tokens)


def _prompt_context(tokenizer: PreTrainedTokenizerBase, prompt_token_ids: Sequence[int]) -> list[int]:
    """The shortest prompt suffix (>= 4 tokens, <= 24) that decodes without a partial character at its start."""
    num_prompt_tokens = len(prompt_token_ids)
    for num_context in range(_MIN_CONTEXT_TOKENS, min(num_prompt_tokens, _MAX_CONTEXT_TOKENS) + 1):
        suffix = list(prompt_token_ids[-num_context:])
        if _REPLACEMENT_CHAR not in tokenizer.decode(suffix, skip_special_tokens=False):
            return suffix
    return list(prompt_token_ids[-_MIN_CONTEXT_TOKENS:])


class IncrementalDetokenizer:
    """Text of one sample, built token by token, with stop-string detection and stream-safe deltas.

    Stop strings are not searched in the text of the first `min_tokens` output tokens (as EOS is masked
    there), so a sample is at least min_tokens tokens long before a stop string can end it.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: list[int], params: SamplingParams
    ) -> None:
        self._decoder = make_stream_decoder(tokenizer, prompt_token_ids, params.skip_special_tokens)
        self._stop_strings = params.stop
        self._min_tokens = params.min_tokens
        self._include_stop_str = params.include_stop_str_in_output
        self.output_text = ""
        self.num_output_tokens = 0
        self.stop_reason: str | None = None
        self._num_checked_chars = 0  # output_text[:this] holds no stop string (or is exempt by min_tokens)
        self._num_emitted_chars = 0  # output_text[:this] was returned by get_delta

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append tokens; return the stop string they completed (output_text is then final) or None.

        Tokens after a matched stop string are ignored, as are calls after one matched.
        """
        for token_id in new_token_ids:
            if self.stop_reason is not None:
                break
            self.num_output_tokens += 1
            self.output_text += self._decoder.step(token_id)
            self.stop_reason = self._check_stop_strings()
        return self.stop_reason

    def get_delta(self, finished: bool) -> str:
        """Text new since the last call. Unless finished (or stopped), hold back a possible stop-string prefix."""
        end = len(self.output_text)
        if not finished and self.stop_reason is None:
            end -= self._num_held_back_chars()
        end = max(end, self._num_emitted_chars)
        delta = self.output_text[self._num_emitted_chars : end]
        self._num_emitted_chars = end
        return delta

    def _check_stop_strings(self) -> str | None:
        if not self._stop_strings:
            return None
        if self.num_output_tokens <= self._min_tokens:
            self._num_checked_chars = len(self.output_text)
            return None
        match_start, matched = len(self.output_text), None
        for stop in self._stop_strings:
            search_from = max(0, self._num_checked_chars - len(stop) + 1)
            start = self.output_text.find(stop, search_from)
            if start != -1 and start < match_start:
                match_start, matched = start, stop
        self._num_checked_chars = len(self.output_text)
        if matched is not None:
            end = match_start + len(matched) if self._include_stop_str else match_start
            self.output_text = self.output_text[:end]
        return matched

    def _num_held_back_chars(self) -> int:
        """Length of the longest tail of output_text that is a proper prefix of some stop string."""
        held = 0
        for stop in self._stop_strings:
            for length in range(min(len(stop) - 1, len(self.output_text)), held, -1):
                if self.output_text.endswith(stop[:length]):
                    held = length
                    break
        return held
