"""Grammar compilation cache, per-request matchers and the sampler's token masks, on a byte-level toy
tokenizer (256 byte tokens + <eos>; no weights)."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.unit.conftest import RequestFactory
from yaie.sampling.allowed_tokens import AllowedTokens, GrammarBitmask, bitmask_from_token_ids, unpack_bitmask
from yaie.sampling.metadata import SamplingMetadata
from yaie.sampling.sampler import Sampler
from yaie.scheduler.output import RequestUpdate, ScheduledChunk
from yaie.structured.compiler import GrammarCompiler
from yaie.structured.manager import StructuredOutputManager
from yaie.types import FinishReason, InvalidParameterError, StructuredSpec

VOCAB_SIZE = 300  # logits width; the tokenizer has 257 tokens, the rest is padding no grammar allows
EOS_ID = 256


@pytest.fixture(scope="module")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


@pytest.fixture
def compiler(byte_tokenizer: PreTrainedTokenizerFast) -> GrammarCompiler:
    return GrammarCompiler(byte_tokenizer, VOCAB_SIZE, [EOS_ID], max_cached=2)


def token(tokenizer: PreTrainedTokenizerFast, text: str) -> int:
    (token_id,) = tokenizer.encode(text, add_special_tokens=False)
    return token_id


def allowed_ids(grammar: GrammarBitmask, row: int = 0) -> set[int]:
    return set(unpack_bitmask(grammar.bitmask, VOCAB_SIZE)[row].nonzero().squeeze(1).tolist())


def test_grammars_are_compiled_once_and_evicted_least_recently_used(compiler: GrammarCompiler) -> None:
    yes_no, digits = StructuredSpec("choice", '["yes", "no"]'), StructuredSpec("regex", "[0-9]+")
    first = compiler.compile(yes_no)
    assert compiler.compile(StructuredSpec("choice", '["yes", "no"]')) is first
    compiler.compile(digits)
    compiler.compile(yes_no)  # yes_no becomes the most recent
    compiler.compile(StructuredSpec("json_object"))  # evicts digits
    assert compiler.num_compiled == 3 and compiler.num_cached == 2
    compiler.compile(digits)
    assert compiler.num_compiled == 4
    assert compiler.new_matcher(yes_no) is not compiler.compile(yes_no)


@pytest.mark.parametrize(
    ("spec", "param", "fragment"),
    [
        (StructuredSpec("json_schema", '{"type": "strin"}'), "response_format", "strin"),
        (StructuredSpec("json_schema", "not json"), "response_format", "json_schema"),
        (StructuredSpec("regex", "a{3"), "guided_regex", "unclosed"),
        (StructuredSpec("choice", "[]"), "guided_choice", "non-empty"),
    ],
)
def test_invalid_grammars_name_the_field(compiler: GrammarCompiler, spec: StructuredSpec, param: str,
                                         fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        compiler.compile(spec)
    assert info.value.param == param and fragment in str(info.value)


def test_matcher_masks_advance_and_finish_when_the_grammar_is_complete(
        compiler: GrammarCompiler, byte_tokenizer: PreTrainedTokenizerFast, make_request: RequestFactory) -> None:
    manager = StructuredOutputManager(compiler)
    constrained = make_request("c", 4, structured=StructuredSpec("choice", '["yes", "no"]'))
    free = make_request("f", 4)
    manager.add(constrained)
    t = {ch: token(byte_tokenizer, ch) for ch in "yesno"}

    def step(chunks: list[ScheduledChunk], new_token: int) -> set[str]:
        constrained.append_output_token(new_token)
        return manager.advance([RequestUpdate(constrained, [new_token], [])])

    chunks = [ScheduledChunk(free, [0], 4, [0], True), ScheduledChunk(constrained, [0], 4, [1], True)]
    grammar = manager.bitmask(chunks)
    assert grammar is not None and grammar.chunk_indices == (1,)  # the free chunk has no mask
    assert allowed_ids(grammar) == {t["y"], t["n"]}
    assert step(chunks, t["y"]) == set()
    assert allowed_ids(manager.bitmask(chunks)) == {t["e"]}  # type: ignore[arg-type]
    assert step(chunks, t["e"]) == set()
    assert step(chunks, t["s"]) == {"c"}  # "yes" is complete: finish now, no EOS step
    assert not manager.has_requests


def test_a_prefill_chunk_gets_no_mask_and_finished_requests_are_dropped(
        compiler: GrammarCompiler, make_request: RequestFactory) -> None:
    manager = StructuredOutputManager(compiler)
    request = make_request("r", 40, structured=StructuredSpec("regex", "[0-9]+"))
    manager.add(request)
    assert manager.bitmask([ScheduledChunk(request, list(range(16)), 0, [0], False)]) is None
    request.append_output_token(EOS_ID)
    assert manager.advance([RequestUpdate(request, [EOS_ID], [], FinishReason.STOP)]) == set()
    assert not manager.has_requests


def test_a_rejected_token_finishes_the_request(compiler: GrammarCompiler, byte_tokenizer: PreTrainedTokenizerFast,
                                               make_request: RequestFactory) -> None:
    manager = StructuredOutputManager(compiler)
    request = make_request("r", 4, structured=StructuredSpec("regex", "[0-9]+"))
    manager.add(request)
    letter = token(byte_tokenizer, "x")
    request.append_output_token(letter)
    assert manager.advance([RequestUpdate(request, [letter], [])]) == {"r"}


def test_json_schema_masks_follow_the_schema(compiler: GrammarCompiler, byte_tokenizer: PreTrainedTokenizerFast,
                                             make_request: RequestFactory) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    request = make_request("j", 4, structured=StructuredSpec("json_schema", json.dumps(schema)))
    manager = StructuredOutputManager(compiler)
    manager.add(request)
    chunk = [ScheduledChunk(request, [0], 4, [0], True)]
    completed: set[str] = set()
    for ch in '{"ok": true}':
        assert token(byte_tokenizer, ch) in allowed_ids(manager.bitmask(chunk))  # type: ignore[arg-type]
        request.append_output_token(token(byte_tokenizer, ch))
        completed = manager.advance([RequestUpdate(request, [token(byte_tokenizer, ch)], [])])
    assert completed == {"j"}


def test_sampler_masks_only_constrained_rows(make_request: RequestFactory) -> None:
    vocab_size = 40
    logits = torch.arange(3 * vocab_size, dtype=torch.float32).reshape(3, vocab_size)  # best: last token
    requests = [make_request(str(i), 4, temperature=0.0) for i in range(3)]
    allowed = AllowedTokens(row_ids=torch.tensor([2, 0]),
                            bitmask=bitmask_from_token_ids([[3, 33], [5]], vocab_size))
    metadata = SamplingMetadata.from_requests(requests, vocab_size, torch.device("cpu"), allowed)
    assert Sampler()(logits, metadata).token_ids.tolist() == [5, vocab_size - 1, 33]
    plain = SamplingMetadata.from_requests(requests, vocab_size, torch.device("cpu"))
    assert plain.allowed_tokens is None and plain.is_plain_greedy


def test_random_rows_sample_only_allowed_tokens(make_request: RequestFactory) -> None:
    vocab_size = 64
    requests = [make_request(str(i), 4, temperature=1.0, seed=i) for i in range(8)]
    allowed = AllowedTokens(row_ids=torch.arange(8), bitmask=bitmask_from_token_ids([[7, 40, 63]] * 8, vocab_size))
    metadata = SamplingMetadata.from_requests(requests, vocab_size, torch.device("cpu"), allowed)
    token_ids = Sampler()(torch.zeros(8, vocab_size), metadata).token_ids.tolist()
    assert set(token_ids) <= {7, 40, 63}


def test_chunk_masks_map_to_sampler_rows() -> None:
    grammar = GrammarBitmask((4, 1), bitmask_from_token_ids([[1], [2]], 32))
    allowed = AllowedTokens.for_rows(grammar, [1, 2, 4], torch.device("cpu"))
    assert allowed.row_ids.tolist() == [2, 0]
    with pytest.raises(ValueError, match="do not sample"):
        AllowedTokens.for_rows(grammar, [1, 2], torch.device("cpu"))


def test_numpy_and_torch_mask_paths_agree() -> None:
    from yaie.sampling.allowed_tokens import apply_allowed_tokens

    generator = torch.Generator().manual_seed(0)
    vocab_size = 100  # not a multiple of 32: the last word's spare bits are ignored
    bitmask = torch.randint(-2**31, 2**31 - 1, (2, 4), dtype=torch.int32, generator=generator)
    allowed = AllowedTokens(row_ids=torch.tensor([3, 0]), bitmask=bitmask)
    contiguous = torch.randn(4, vocab_size, generator=generator)
    strided = contiguous.t().contiguous().t()  # same values, not contiguous: the torch path
    assert not strided.is_contiguous()
    expected = contiguous.clone()
    expected[[3, 0]] = expected[[3, 0]].masked_fill(~unpack_bitmask(bitmask, vocab_size), float("-inf"))
    assert torch.equal(apply_allowed_tokens(contiguous, allowed), expected)
    assert torch.equal(apply_allowed_tokens(strided, allowed), expected)
