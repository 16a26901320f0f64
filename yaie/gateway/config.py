"""The gateway's frozen configuration, read from a YAML mapping (`--gateway-config FILE` or the `gateway:` section
of the `yaie serve --config` file). Money is integer micro-dollars; prices are kept per million tokens so that
cheap models stay exact. Every bad value raises ValueError naming the key.

```yaml
gateway:
  data_dir: /var/lib/yaie            # SQLite file gateway.db lives here (default ~/.local/share/yaie)
  database_url: null                 # e.g. postgresql+asyncpg://user:pw@host/db (overrides data_dir)
  rate_limit_storage: memory         # or redis://host:port/0 (shared by several server processes)
  retention_days: null               # purge ledger/audit content older than this
  pricing:
    models: {my-model: {prompt_usd_per_1k: 0.0005, cached_usd_per_1k: 0.0001, completion_usd_per_1k: 0.0015}}
    local_gpu_hour_usd: 2.0          # models without a price: derived from a GPU-hour price
    local_tokens_per_s: 2000         #   and a measured decode throughput
  alerts: {thresholds: [0.8, 1.0], webhook_url: null}
  pii: {entities: [EMAIL_ADDRESS, ...], score_threshold: 0.4, max_chars: 100000, scan_completions: false}
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

MICROS_PER_USD = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are micro-dollars per million tokens
DEFAULT_PII_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IP_ADDRESS", "IBAN_CODE",
                        "URL", "CRYPTO", "US_BANK_NUMBER", "US_PASSPORT", "UK_NHS", "MAC_ADDRESS")
ADMIN_KEY_ENV = "YAIE_ADMIN_KEY"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "yaie"


def usd_to_micros(value: Any, name: str) -> int:
    """A non-negative USD amount (number or decimal string) as integer micro-dollars (exact; finer is an error)."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} must be a number of US dollars, got {value!r}") from None
    micros = amount * MICROS_PER_USD
    if not amount.is_finite() or amount < 0 or micros != micros.to_integral_value():
        raise ValueError(f"{name} must be a non-negative USD amount with at most 6 decimals, got {value!r}")
    return int(micros)


def price_per_1k_to_micros_per_mtok(value: Any, name: str) -> int:
    """USD per 1k tokens -> micro-dollars per million tokens (exact to 1e-9 USD per 1k)."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} must be a price in USD per 1k tokens, got {value!r}") from None
    units = amount * MICROS_PER_USD * (TOKENS_PER_PRICE_UNIT // 1000)
    if not amount.is_finite() or amount < 0 or units != units.to_integral_value():
        raise ValueError(f"{name} must be a non-negative USD price per 1k tokens with at most 9 decimals, "
                         f"got {value!r}")
    return int(units)


@dataclass(frozen=True)
class ModelPrice:
    """Micro-dollars per million tokens of each kind; cached prompt tokens are never dearer than fresh ones."""

    prompt_micros_per_mtok: int
    cached_micros_per_mtok: int
    completion_micros_per_mtok: int

    def __post_init__(self) -> None:
        if min(self.prompt_micros_per_mtok, self.cached_micros_per_mtok, self.completion_micros_per_mtok) < 0:
            raise ValueError("prices must be >= 0")
        if self.cached_micros_per_mtok > self.prompt_micros_per_mtok:
            raise ValueError("cached_usd_per_1k must not exceed prompt_usd_per_1k")

    def cost_micros(self, num_prompt_tokens: int, num_cached_tokens: int, num_completion_tokens: int) -> int:
        """Cost of one request, rounded up to a whole micro-dollar. `num_cached_tokens` is part of the prompt."""
        num_fresh = max(0, num_prompt_tokens - num_cached_tokens)
        total = (num_fresh * self.prompt_micros_per_mtok + num_cached_tokens * self.cached_micros_per_mtok
                 + num_completion_tokens * self.completion_micros_per_mtok)
        return -(-total // TOKENS_PER_PRICE_UNIT)


@dataclass(frozen=True)
class PricingConfig:
    """Per-model prices; a model without one costs what a GPU-hour buys at the measured throughput."""

    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    local_gpu_hour_usd: Decimal = Decimal("2.0")
    local_tokens_per_s: float = 1000.0

    def __post_init__(self) -> None:
        if self.local_tokens_per_s <= 0:
            raise ValueError(f"pricing.local_tokens_per_s must be > 0, got {self.local_tokens_per_s}")
        if self.local_gpu_hour_usd < 0:
            raise ValueError(f"pricing.local_gpu_hour_usd must be >= 0, got {self.local_gpu_hour_usd}")

    def local_price(self) -> ModelPrice:
        """Completion tokens at GPU-hour / (tokens per hour); prompt tokens (batched prefill) at a quarter of
        that, cached ones at a tenth."""
        completion = int(self.local_gpu_hour_usd * MICROS_PER_USD * TOKENS_PER_PRICE_UNIT
                          / Decimal(str(self.local_tokens_per_s * 3600)))
        return ModelPrice(completion // 4, completion // 10, completion)

    def price_of(self, model: str) -> ModelPrice:
        return self.models.get(model) or self.local_price()


@dataclass(frozen=True)
class AlertConfig:
    thresholds: tuple[float, ...] = (0.8, 1.0)
    webhook_url: str | None = None

    def __post_init__(self) -> None:
        if any(not 0 < t <= 1 for t in self.thresholds):
            raise ValueError(f"alerts.thresholds must be fractions in (0, 1], got {list(self.thresholds)}")


@dataclass(frozen=True)
class PIIConfig:
    entities: tuple[str, ...] = DEFAULT_PII_ENTITIES
    score_threshold: float = 0.4
    max_chars: int = 100_000
    scan_completions: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"pii.score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_chars < 1:
            raise ValueError(f"pii.max_chars must be >= 1, got {self.max_chars}")
        if not self.entities:
            raise ValueError("pii.entities must name at least one entity type")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs; `database_url` wins over `data_dir`."""

    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    rate_limit_storage: str = "memory"
    retention_days: int | None = None
    ledger_flush_interval_s: float = 1.0
    key_refresh_interval_s: float = 2.0
    pricing: PricingConfig = field(default_factory=PricingConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)

    def __post_init__(self) -> None:
        storage = self.rate_limit_storage
        if storage != "memory" and not storage.startswith(("redis://", "rediss://")):
            raise ValueError(f"rate_limit_storage must be 'memory' or a redis:// URL, got {storage!r}")
        if self.retention_days is not None and self.retention_days < 1:
            raise ValueError(f"retention_days must be >= 1, got {self.retention_days}")
        if not 0 < self.ledger_flush_interval_s <= 1.0:
            raise ValueError(f"ledger_flush_interval_s must be in (0, 1], got {self.ledger_flush_interval_s}")
        if self.key_refresh_interval_s <= 0:
            raise ValueError(f"key_refresh_interval_s must be > 0, got {self.key_refresh_interval_s}")

    @property
    def url(self) -> str:
        """The SQLAlchemy async URL of the database."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'gateway.db'}"


def gateway_config_from_mapping(section: Mapping[str, Any], data_dir: Path | None = None) -> GatewayConfig:
    """Build a GatewayConfig from the `gateway:` mapping; `data_dir` (e.g. --data-dir) overrides the file."""
    values = dict(section)
    known = {"data_dir", "database_url", "rate_limit_storage", "retention_days", "ledger_flush_interval_s",
             "key_refresh_interval_s", "pricing", "alerts", "pii"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"gateway: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {k: v for k, v in values.items() if k not in ("pricing", "alerts", "pii")}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if "data_dir" in kwargs:
        kwargs["data_dir"] = Path(str(kwargs["data_dir"])).expanduser()
    kwargs["pricing"] = _pricing(values.get("pricing") or {})
    kwargs["alerts"] = _section(AlertConfig, values.get("alerts") or {}, "alerts", tuple_keys=("thresholds",))
    kwargs["pii"] = _section(PIIConfig, values.get("pii") or {}, "pii", tuple_keys=("entities",))
    try:
        return GatewayConfig(**kwargs)
    except TypeError as exc:
        raise ValueError(f"gateway: {exc}") from None


def _section(cls: type, values: Mapping[str, Any], name: str, tuple_keys: tuple[str, ...]) -> Any:
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"gateway.{name}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    kwargs = {k: tuple(v) if k in tuple_keys else v for k, v in values.items()}
    return cls(**kwargs)


def _pricing(values: Mapping[str, Any]) -> PricingConfig:
    unknown = sorted(set(values) - {"models", "local_gpu_hour_usd", "local_tokens_per_s"})
    if unknown:
        raise ValueError(f"gateway.pricing: unknown key(s) {', '.join(unknown)}")
    models = {}
    for model, entry in (values.get("models") or {}).items():
        prefix = f"gateway.pricing.models.{model}"
        prompt = price_per_1k_to_micros_per_mtok(entry.get("prompt_usd_per_1k", 0), f"{prefix}.prompt_usd_per_1k")
        cached = price_per_1k_to_micros_per_mtok(entry.get("cached_usd_per_1k", entry.get("prompt_usd_per_1k", 0)),
                                                 f"{prefix}.cached_usd_per_1k")
        completion = price_per_1k_to_micros_per_mtok(entry.get("completion_usd_per_1k", 0),
                                                     f"{prefix}.completion_usd_per_1k")
        models[str(model)] = ModelPrice(prompt, cached, completion)
    kwargs: dict[str, Any] = {"models": models}
    if "local_gpu_hour_usd" in values:
        kwargs["local_gpu_hour_usd"] = Decimal(usd_to_micros(values["local_gpu_hour_usd"],
                                                             "gateway.pricing.local_gpu_hour_usd")) / MICROS_PER_USD
    if "local_tokens_per_s" in values:
        kwargs["local_tokens_per_s"] = float(values["local_tokens_per_s"])
    return PricingConfig(**kwargs)


def load_gateway_config(path: Path, data_dir: Path | None = None, section_required: bool = False) -> GatewayConfig | None:
    """Read a YAML file: either a whole `gateway:`-sectioned config or a bare gateway mapping.

    Returns None when the file is a serve config without a `gateway:` section (and `section_required` is false).
    """
    import yaml

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read gateway config {path}: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"gateway config {path}: the top level must be a mapping")
    if "gateway" in document:
        section = document["gateway"] or {}
        if not isinstance(section, dict):
            raise ValueError(f"gateway config {path}: the gateway section must be a mapping")
        return gateway_config_from_mapping(section, data_dir)
    if section_required:
        return gateway_config_from_mapping(document, data_dir)
    return None


def serve_gateway_config(gateway_config: str | None, serve_config: Path | None, data_dir: str | None,
                         api_key: str | None) -> GatewayConfig | None:
    """`yaie serve`'s gateway: from --gateway-config, else the `gateway:` section of --config, else None (off)."""
    directory = Path(data_dir).expanduser() if data_dir else None
    config = None
    if gateway_config:
        config = load_gateway_config(Path(gateway_config), directory, section_required=True)
    elif serve_config is not None:
        config = load_gateway_config(serve_config, directory)
    if config is not None and api_key:
        raise ValueError("--api-key (YAIE_API_KEY) cannot be combined with the gateway: gateway API keys "
                         "(`yaie keys create`) replace it")
    return config
