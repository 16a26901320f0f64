"""Tokenizers for both checkpoint formats, always a transformers fast tokenizer.

GGUF files carry their vocabulary, merges and chat template in metadata; transformers converts them
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`). Hugging Face directories carry tokenizer files.
The end-of-generation ids are gathered here because they come from several places: the checkpoint's
declared eos, the generation config, and the chat template's end-of-turn token (SmolLM2-Instruct and
Qwen end turns with `<|im_end|>`, Llama 3 with `<|eot_id|>`), which must stop a chat turn.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from yaie.models.arch import ModelLoadError

# End-of-turn markers used by common chat templates; one counts only if the template emits it and the
# vocabulary has it as an added (special) token.
_TURN_END_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


def load_gguf_tokenizer(gguf_path: Path, chat_template: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer stored in a GGUF file's metadata, with `chat_template` set from that metadata.

    Converting GGUF metadata takes seconds, so the converted tokenizer is saved under the cache directory,
    keyed by the file's path, size and mtime, and later starts load it from there in a fraction of a second.
    """
    cached = _tokenizer_cache_dir(gguf_path)
    if cached is not None and (cached / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
        except Exception:  # a damaged cache entry: rebuild it below
            pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
        )
    except Exception as exc:  # transformers raises many types for bad metadata
        raise ModelLoadError(f"{gguf_path}: cannot build a tokenizer from the GGUF metadata: {exc}") from exc
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if cached is not None:
        _save_quietly(tokenizer, cached)
    return tokenizer


def _tokenizer_cache_dir(gguf_path: Path) -> Path | None:
    try:
        stat = gguf_path.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    root = Path(os.environ.get("YAIE_CACHE_DIR", Path.home() / ".cache" / "yaie"))
    return root / "tokenizers" / key


def _save_quietly(tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write atomically (temp dir + rename); a read-only or full disk only costs the cache."""
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=target.parent)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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
