"""PII detection and redaction with Microsoft Presidio, in-process and offline.

Only pattern and checksum recognizers run (no NLP model is loaded: Presidio's no-op NLP engine), restricted to
the configured entity allow-list and score threshold. `TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS` is emptied before
Presidio is imported so its URL recognizer never reaches the network. Redaction replaces each entity with a
typed placeholder such as `<EMAIL_ADDRESS>`. NER hook: pass `extra_recognizers` (e.g. a SpacyRecognizer for
PERSON/LOCATION) and an `nlp_engine` that provides what they need, where such a model is installed.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from yaie.gateway.config import PIIConfig

# entity type -> Presidio predefined recognizer class name (all pattern/checksum based)
PATTERN_RECOGNIZERS = {
    "EMAIL_ADDRESS": "EmailRecognizer", "PHONE_NUMBER": "PhoneRecognizer", "CREDIT_CARD": "CreditCardRecognizer",
    "US_SSN": "UsSsnRecognizer", "IP_ADDRESS": "IpRecognizer", "IBAN_CODE": "IbanRecognizer",
    "URL": "UrlRecognizer", "CRYPTO": "CryptoRecognizer", "US_BANK_NUMBER": "UsBankRecognizer",
    "US_PASSPORT": "UsPassportRecognizer", "US_DRIVER_LICENSE": "UsLicenseRecognizer", "US_ITIN": "UsItinRecognizer",
    "UK_NHS": "NhsRecognizer", "MAC_ADDRESS": "MacAddressRecognizer", "MEDICAL_LICENSE": "MedicalLicenseRecognizer",
}


@dataclass(frozen=True)
class Redaction:
    text: str
    entity_counts: dict[str, int]  # entity type -> occurrences found


def import_presidio() -> Any:
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""  # must precede the import: no network, ever
    import presidio_analyzer

    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)  # it logs INFO on every call

    return presidio_analyzer


class PIIScanner:
    """Thread-safe after construction (the analyzer holds no per-call state). Construction imports Presidio
    (seconds): build it off the event loop."""

    def __init__(self, config: PIIConfig, extra_recognizers: Sequence[Any] = (), nlp_engine: Any = None) -> None:
        unknown = [e for e in config.entities if e not in PATTERN_RECOGNIZERS] if not extra_recognizers else []
        if unknown:
            raise ValueError(f"pii.entities: no offline recognizer for {', '.join(unknown)}; supported: "
                             f"{', '.join(PATTERN_RECOGNIZERS)} (PERSON/LOCATION need an NER model: extra_recognizers)")
        presidio = import_presidio()
        from presidio_analyzer import predefined_recognizers
        from presidio_analyzer.nlp_engine import NoOpNlpEngine

        registry = presidio.RecognizerRegistry(supported_languages=["en"])
        for entity in config.entities:
            if entity in PATTERN_RECOGNIZERS:
                registry.add_recognizer(getattr(predefined_recognizers, PATTERN_RECOGNIZERS[entity])())
        for recognizer in extra_recognizers:
            registry.add_recognizer(recognizer)
        engine = nlp_engine or NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        self._analyzer = presidio.AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
        self.entities = list(config.entities)
        self.score_threshold = config.score_threshold
        self.max_chars = config.max_chars

    def analyze(self, text: str) -> list[Any]:
        """Presidio results (entity_type, start, end, score) at or above the threshold, overlaps resolved."""
        if not text:
            return []
        results = self._analyzer.analyze(text=text, language="en", entities=self.entities,
                                         score_threshold=self.score_threshold)
        return _without_overlaps(results)

    def redact(self, text: str) -> Redaction:
        results = self.analyze(text)
        if not results:
            return Redaction(text, {})
        pieces, last = [], 0
        for result in results:  # sorted, disjoint
            pieces += [text[last:result.start], f"<{result.entity_type}>"]
            last = result.end
        pieces.append(text[last:])
        return Redaction("".join(pieces), dict(Counter(r.entity_type for r in results)))


def _without_overlaps(results: list[Any]) -> list[Any]:
    """Keep the best of overlapping spans: higher score, then longer span, wins."""
    ranked = sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start))
    kept: list[Any] = []
    for result in ranked:
        if all(result.end <= k.start or result.start >= k.end for k in kept):
            kept.append(result)
    return sorted(kept, key=lambda r: r.start)
