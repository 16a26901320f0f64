"""StructuredSpec -> compiled llguidance grammar, cached.

Compiling builds the grammar's lexer and parser tables against the tokenizer (the costly part); the result is
kept as a pristine matcher in an LRU cache keyed by (kind, payload) — for JSON schemas the canonical JSON —
and every request gets a cheap `deep_copy` of it. The llguidance tokenizer (about a second to build) is
made on first use. Thread-safe: the HTTP layer compiles ahead on worker threads (so a new schema costs the
engine loop nothing and an invalid one is a 400 before the request is queued); the engine thread then hits
the cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import llguidance

from yaie.structured.specs import JSON_OPTIONS
from yaie.types import InvalidParameterError, StructuredSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_CACHED_GRAMMARS = 256

_PARAM_OF_KIND = {"json_object": "response_format", "json_schema": "response_format", "regex": "guided_regex",
                  "choice": "guided_choice", "grammar": "guided_grammar"}


def grammar_source(spec: StructuredSpec) -> str:
    """The llguidance grammar text for a spec. Raises InvalidParameterError for a malformed payload."""
    param = _PARAM_OF_KIND[spec.kind]
    try:
        if spec.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=JSON_OPTIONS)
        if spec.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(spec.payload, overrides=JSON_OPTIONS)
        if spec.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.payload)
        if spec.kind == "choice":
            choices = json.loads(spec.payload)
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                raise ValueError("guided_choice must be a non-empty list of strings")
            return llguidance.grammar_from("choice", spec.payload)
        return llguidance.LLMatcher.grammar_from_lark(spec.payload)
    except ValueError as exc:
        raise InvalidParameterError(param, f"invalid {spec.kind} constraint: {exc}") from None


class GrammarCompiler:
    """Compiles and caches grammars for one tokenizer; `new_matcher(spec)` is a fresh matcher per request.

    `vocab_size` is the width of the model's logits (masks cover it); `eos_token_ids` are the tokens a
    grammar allows once it accepts (the engine's end-of-generation ids).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: Iterable[int],
                 max_cached: int = DEFAULT_MAX_CACHED_GRAMMARS) -> None:
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._max_cached = max_cached
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._tokenizer_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.num_compiled = 0  # grammars compiled (cache misses), for tests and stats

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._tokenizer_lock:
            if self._ll_tokenizer is None:
                import llguidance.hf
                eos = self._eos_token_ids or None
                self._ll_tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size,
                                                                  eos_token=eos)
            return self._ll_tokenizer

    def compile(self, spec: StructuredSpec) -> llguidance.LLMatcher:
        """The cached pristine matcher for `spec` (never advance it). Raises InvalidParameterError naming the
        request field and the grammar's problem."""
        key = (spec.kind, spec.payload)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar_source(spec), log_level=0)
        if matcher.is_error():
            raise InvalidParameterError(_PARAM_OF_KIND[spec.kind],
                                        f"invalid {spec.kind} constraint: {_one_line(matcher.get_error())}")
        with self._cache_lock:
            self.num_compiled += 1
            self._cache[key] = matcher
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return matcher

    def new_matcher(self, spec: StructuredSpec) -> llguidance.LLMatcher:
        return self.compile(spec).deep_copy()

    @property
    def num_cached(self) -> int:
        return len(self._cache)


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "the grammar is invalid"
