"""Synthetic prompts of exact lengths, reproducible from a seed.

Token-id prompts are exact for any server that accepts `prompt` as a list of ints: ids are drawn from a "safe"
range that avoids both the low ids (where most vocabularies put special tokens) and the high ids (where Llama-3
and Qwen put theirs). Word prompts are the fallback for servers that only take text: one common English word per
intended token, which most BPE vocabularies encode as one token each; the server's `usage.prompt_tokens` then
gives the real count.

With `shared_prefix_len = P`, every prompt starts with the same P tokens (or words), for prefix-cache workloads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_TOKEN_ID_RANGE: tuple[int, int] = (1000, 20000)

_WORDS: tuple[str, ...] = (
    "time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school",
    "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week",
    "company", "system", "program", "question", "work", "government", "number", "night", "point", "home",
    "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book",
    "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father",
    "power", "hour", "game", "line", "end", "member", "law", "car", "city", "community", "name", "president",
    "team", "minute", "idea", "kid", "body", "information", "back", "parent", "face", "others", "level",
    "office", "door", "health", "person", "art", "war", "history", "party", "result", "change", "morning",
    "reason", "research", "girl", "guy", "moment", "air", "teacher", "force", "education", "good", "new",
    "first", "last", "long", "great", "little", "own", "other", "old", "big", "high", "different", "small",
    "large", "next", "early", "young", "important", "few", "public", "bad", "same", "able", "blue", "green",
    "red", "open", "black", "white", "happy", "free", "real", "best", "sure", "clear", "strong", "full",
    "run", "make", "take", "see", "come", "think", "look", "want", "give", "use", "find", "tell", "ask",
    "seem", "feel", "try", "leave", "call", "keep", "let", "begin", "help", "talk", "turn", "start", "show",
    "hear", "play", "move", "like", "live", "believe", "hold", "bring", "happen", "write", "provide", "sit",
    "stand", "lose", "pay", "meet", "include", "continue", "set", "learn", "lead", "understand", "watch",
)


@dataclass(frozen=True)
class PromptSpec:
    """What to generate. `token_id_range` is [low, high) for token-id prompts."""

    num_prompts: int
    input_len: int
    shared_prefix_len: int = 0
    seed: int = 0
    token_id_range: tuple[int, int] = DEFAULT_TOKEN_ID_RANGE

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.input_len < 1:
            raise ValueError(f"input_len must be >= 1, got {self.input_len}")
        if not 0 <= self.shared_prefix_len <= self.input_len:
            raise ValueError(
                f"shared_prefix_len must be in [0, input_len={self.input_len}], got {self.shared_prefix_len}"
            )
        low, high = self.token_id_range
        if not 0 <= low < high:
            raise ValueError(f"token_id_range must satisfy 0 <= low < high, got {self.token_id_range}")


def random_token_id_prompts(spec: PromptSpec) -> list[list[int]]:
    """`num_prompts` lists of exactly `input_len` ids; the first `shared_prefix_len` are shared by all."""
    rng = random.Random(spec.seed)
    low, high = spec.token_id_range
    prefix_ids = [rng.randrange(low, high) for _ in range(spec.shared_prefix_len)]
    num_unique = spec.input_len - spec.shared_prefix_len
    return [prefix_ids + [rng.randrange(low, high) for _ in range(num_unique)] for _ in range(spec.num_prompts)]


def random_word_prompts(spec: PromptSpec) -> list[str]:
    """`num_prompts` strings of exactly `input_len` words; the first `shared_prefix_len` words are shared."""
    rng = random.Random(spec.seed)
    prefix_words = [rng.choice(_WORDS) for _ in range(spec.shared_prefix_len)]
    num_unique = spec.input_len - spec.shared_prefix_len
    return [
        " ".join(prefix_words + [rng.choice(_WORDS) for _ in range(num_unique)]) for _ in range(spec.num_prompts)
    ]


def safe_token_id_range(vocab_size: int | None) -> tuple[int, int]:
    """The default range, shrunk to fit a vocabulary smaller than it (e.g. tiny test models)."""
    if vocab_size is None:
        return DEFAULT_TOKEN_ID_RANGE
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    low, high = DEFAULT_TOKEN_ID_RANGE
    high = min(high, vocab_size)
    low = min(low, high // 4)
    return low, high


def poisson_send_offsets_s(
    num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """Send time of each request, in seconds from the start; the first goes at 0.

    `request_rate = inf` sends all at once. Otherwise intervals are gamma-distributed with mean 1/request_rate;
    burstiness 1.0 is a Poisson process (exponential intervals), lower is burstier, higher is more regular.
    """
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0, got {request_rate}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if request_rate == float("inf"):
        return [0.0] * num_requests
    rng = random.Random(seed)
    scale_s = 1.0 / (request_rate * burstiness)
    offsets_s = [0.0]
    for _ in range(num_requests - 1):
        offsets_s.append(offsets_s[-1] + rng.gammavariate(burstiness, scale_s))
    return offsets_s
