"""Tokenizers for both checkpoint formats, always a transformers fast tokenizer.

GGUF files carry their vocabulary, merges and chat template in metadata; transformers converts them
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`). Hugging Face directories carry tokenizer files.
The end-of-generation ids are gathered here because they come from several places: the checkpoint's
declared eos, the generation config, and the chat template's end-of-turn token (SmolLM2-Instruct and
Qwen end turns with `<|im_end|>`, Llama 3 with `<|eot_id|>`), which must stop a chat turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from yaie.models.arch import ModelLoadError

# End-of-turn markers used by common chat templates; one counts only if the template emits it and the
# vocabulary has it as an added (special) token.
_TURN_END_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


def load_gguf_tokenizer(gguf_path: Path, chat_template: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer stored in a GGUF file's metadata, with `chat_template` set from that metadata."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
        )
    except Exception as exc:  # transformers raises many types for bad metadata
        raise ModelLoadError(f"{gguf_path}: cannot build a tokenizer from the GGUF metadata: {exc}") from exc
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def load_hf_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a Hugging Face model directory (local files only; never the hub)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # missing or malformed tokenizer files surface as many types
        raise ModelLoadError(f"{model_dir}: cannot load the tokenizer files: {exc}") from exc
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{model_dir}: no fast tokenizer (tokenizer.json) could be built")
    return tokenizer


def turn_end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the end-of-turn tokens that the tokenizer's chat template emits."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        return []
    added_vocab = tokenizer.get_added_vocab()  # token -> id
    return [added_vocab[token] for token in _TURN_END_TOKENS if token in template and token in added_vocab]


def merge_eos_token_ids(
    declared: Iterable[int | list[int] | None], tokenizer: PreTrainedTokenizerBase, source: Path
) -> tuple[int, ...]:
    """Declared eos ids (ints, lists or None, in priority order), then the tokenizer's eos, then turn ends.

    Order is kept and duplicates dropped; raises ModelLoadError naming `source` when no eos is found.
    """
    eos_token_ids: list[int] = []
    candidates: list[int | None] = []
    for value in declared:
        candidates.extend(value if isinstance(value, list) else [value])
    candidates.append(tokenizer.eos_token_id)
    candidates.extend(turn_end_token_ids(tokenizer))
    for token_id in candidates:
        if token_id is None:
            continue
        if not isinstance(token_id, int) or token_id < 0:
            raise ModelLoadError(f"{source}: eos_token_id must be a non-negative int, got {token_id!r}")
        if token_id not in eos_token_ids:
            eos_token_ids.append(token_id)
    if not eos_token_ids:
        raise ModelLoadError(f"{source}: no eos token id in the config, generation config or tokenizer")
    return tuple(eos_token_ids)
