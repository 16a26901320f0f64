"""Presidio-based PII redaction and blocking, offline, on a corpus with one sample per entity type."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from yaie.gateway.config import PIIConfig
from yaie.gateway.pii import PIIScanner
from yaie.gateway.pii_request import PIIBlockedError, PIIUnscannableError, apply_pii, text_slots

CORPUS = {
    "EMAIL_ADDRESS": "write to jane.doe@example.com today",
    "PHONE_NUMBER": "call me at (415) 555-2671 tonight",
    "CREDIT_CARD": "my card is 4111 1111 1111 1111",
    "US_SSN": "my ssn is 536-22-1234",
    "IP_ADDRESS": "the server is at 192.168.10.20",
    "IBAN_CODE": "pay to GB33BUKB20201555555555 please",
    "URL": "see https://intranet.example.org/hr/file",
    "CRYPTO": "send to 1BoatSLRHtKNngkdXEeobR76b53LETtpyT",
}


@pytest.fixture(scope="module")
def scanner() -> PIIScanner:
    return PIIScanner(PIIConfig())


def test_presidio_runs_offline(scanner: PIIScanner) -> None:
    assert os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""


@pytest.mark.parametrize("entity", sorted(CORPUS))
def test_each_entity_type_is_redacted_with_a_typed_placeholder(scanner: PIIScanner, entity: str) -> None:
    redaction = scanner.redact(CORPUS[entity])
    assert redaction.entity_counts.get(entity) == 1, redaction
    assert f"<{entity}>" in redaction.text
    assert redaction.text.split(f"<{entity}>")[0] == CORPUS[entity][:len(redaction.text.split(f"<{entity}>")[0])]


def test_clean_text_is_untouched(scanner: PIIScanner) -> None:
    text = "Tell me a story about a cat who likes fish, in three sentences."
    assert scanner.redact(text).text == text


def test_allow_list_and_threshold() -> None:
    only_email = PIIScanner(PIIConfig(entities=("EMAIL_ADDRESS",)))
    text = "mail a@b.com or call (415) 555-2671"
    assert only_email.redact(text).entity_counts == {"EMAIL_ADDRESS": 1}
    strict = PIIScanner(PIIConfig(score_threshold=0.9))  # phone numbers score 0.4: below the threshold
    assert "PHONE_NUMBER" not in strict.redact(text).entity_counts


def test_unknown_entity_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"pii\.entities: no offline recognizer for PERSON"):
        PIIScanner(PIIConfig(entities=("PERSON",)))


async def test_redact_mode_rewrites_every_text_the_model_sees(scanner: PIIScanner) -> None:
    request = {"messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": [{"type": "text", "text": CORPUS["EMAIL_ADDRESS"]},
                                                         {"type": "text", "text": CORPUS["US_SSN"]}]}]}
    counts = await apply_pii("chat", request, "redact", scanner)
    assert counts == {"EMAIL_ADDRESS": 1, "US_SSN": 1}
    parts = request["messages"][1]["content"]
    assert parts[0]["text"] == "write to <EMAIL_ADDRESS> today" and parts[1]["text"] == "my ssn is <US_SSN>"
    prompts = {"prompt": [CORPUS["CREDIT_CARD"], "nothing here"]}
    assert await apply_pii("completion", prompts, "redact", scanner) == {"CREDIT_CARD": 1}
    assert prompts["prompt"] == ["my card is <CREDIT_CARD>", "nothing here"]


async def test_block_mode_names_the_types(scanner: PIIScanner) -> None:
    request = {"input": [CORPUS["IBAN_CODE"], CORPUS["IP_ADDRESS"]]}
    with pytest.raises(PIIBlockedError, match=r"personal data \(IBAN_CODE, IP_ADDRESS\)"):
        await apply_pii("embedding", request, "block", scanner)


async def test_length_cap_and_token_ids_are_refused() -> None:
    capped = PIIScanner(PIIConfig(max_chars=20))
    with pytest.raises(PIIUnscannableError, match="over the 20-character limit"):
        await apply_pii("completion", {"prompt": "x" * 21}, "redact", capped)
    with pytest.raises(PIIUnscannableError, match="token ids"):
        text_slots("completion", {"prompt": [1, 2, 3]})


async def test_long_texts_are_scanned_off_the_event_loop(scanner: PIIScanner) -> None:
    text = ("lorem ipsum dolor sit amet " * 200) + CORPUS["EMAIL_ADDRESS"]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    counts = await apply_pii("completion", {"prompt": text}, "redact", scanner)
    task.cancel()
    assert counts == {"EMAIL_ADDRESS": 1} and ticks > 1
    assert time.perf_counter() - started < 5
