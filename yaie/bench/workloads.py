"""The workloads of `yaie bench compare`: frozen definitions, scaling, and the metrics each one reports.

A `Workload` is one or more request groups (`RunSpec`s) sent to the same server at the same time, each group
measured by its own `run_serve_benchmark` call; W4 has two (decode streams, and long prompts arriving while they
decode). Every group has its own seed, so no two groups (in one workload or across workloads) share prompt ids
and no workload gets prefix-cache hits from an earlier one. All requests stream at temperature 0 with ignore_eos.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from yaie.bench.stats import BenchmarkMetrics, Distribution

# derived metric key: p99 / p50 of the inter-token latency (tail jitter of decode streams)
ITL_TAIL_RATIO = "itl.p99_over_p50"
_DISTRIBUTION_KEYS = frozenset(f.name for f in dataclasses.fields(BenchmarkMetrics)
                               if f.type in (Distribution, "Distribution"))
_SCALAR_KEYS = frozenset(f.name for f in dataclasses.fields(BenchmarkMetrics)) - _DISTRIBUTION_KEYS
_DISTRIBUTION_FIELDS = frozenset(f.name for f in dataclasses.fields(Distribution))


@dataclass(frozen=True)
class RunSpec:
    """One group of identical requests: `num_prompts` prompts of `input_len` tokens (the first
    `shared_prefix_len` shared by all), `output_len` tokens each, at most `concurrency` in flight (None: no cap).
    The group starts `start_delay_s` after the workload; `request_rate` (req/s, inf = all at once) and
    `burstiness` (gamma shape; large = nearly evenly spaced) shape its arrivals."""

    num_prompts: int
    input_len: int
    output_len: int
    concurrency: int | None
    seed: int
    shared_prefix_len: int = 0
    start_delay_s: float = 0.0
    request_rate: float = math.inf
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError(f"input_len and output_len must be >= 1, got {self.input_len}, {self.output_len}")
        if not 0 <= self.shared_prefix_len <= self.input_len:
            raise ValueError(f"shared_prefix_len must be in [0, {self.input_len}], got {self.shared_prefix_len}")
        if self.start_delay_s < 0:
            raise ValueError(f"start_delay_s must be >= 0, got {self.start_delay_s}")

    def describe(self) -> str:
        """E.g. '32 requests, 432 in (400 shared) / 64 out, concurrency 16'."""
        shared = f" ({self.shared_prefix_len} shared)" if self.shared_prefix_len else ""
        text = f"{self.num_prompts} requests, {self.input_len} in{shared} / {self.output_len} out"
        text += f", concurrency {self.concurrency}" if self.concurrency else ", no concurrency cap"
        if math.isfinite(self.request_rate):
            text += f", one about every {1 / self.request_rate:.1f} s"
        if self.start_delay_s:
            text += f", from {self.start_delay_s:.1f} s in"
        return text

    def scaled(self, scale: float) -> RunSpec:
        """Counts and lengths multiplied by `scale` (at least 1 prompt, 1 input and 2 output tokens, so TPOT
        stays defined); time offsets shrink with it, so arrivals keep their place relative to the decode work."""
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        input_len = max(1, round(self.input_len * scale))
        return dataclasses.replace(
            self,
            num_prompts=max(1, round(self.num_prompts * scale)),
            input_len=input_len,
            output_len=max(2, round(self.output_len * scale)),
            shared_prefix_len=min(input_len, round(self.shared_prefix_len * scale)),
            start_delay_s=self.start_delay_s * scale,
            request_rate=self.request_rate / scale,
        )


@dataclass(frozen=True)
class MetricSpec:
    """One reported number: `key` of the `role` group's metrics ('output_throughput', 'ttft.median_ms', or
    ITL_TAIL_RATIO). `higher_is_better` decides which peer is best and which way a ratio is good."""

    label: str
    role: str
    key: str
    higher_is_better: bool

    def __post_init__(self) -> None:
        if self.key == ITL_TAIL_RATIO or self.key in _SCALAR_KEYS:
            return
        dist, _, field = self.key.partition(".")
        if dist not in _DISTRIBUTION_KEYS or field not in _DISTRIBUTION_FIELDS:
            raise ValueError(f"key must name a BenchmarkMetrics number, got {self.key!r}")


@dataclass(frozen=True)
class Workload:
    """`groups` are (role, spec) pairs run concurrently; the first is the primary group (charted).
    `description` says what the workload is for; `describe()` adds the numbers."""

    name: str
    family: str
    description: str
    groups: tuple[tuple[str, RunSpec], ...]
    metrics: tuple[MetricSpec, ...]

    def __post_init__(self) -> None:
        roles = [role for role, _ in self.groups]
        if not roles or len(set(roles)) != len(roles):
            raise ValueError(f"groups must have distinct roles, got {roles}")
        unknown = [m.role for m in self.metrics if m.role not in roles]
        if unknown:
            raise ValueError(f"metrics name unknown roles {unknown}; roles are {roles}")

    def describe(self) -> str:
        """The title and every group's actual counts and lengths (after scaling)."""
        if len(self.groups) == 1:
            return f"{self.description}: {self.groups[0][1].describe()}"
        return f"{self.description}: " + "; ".join(f"{role}: {spec.describe()}" for role, spec in self.groups)

    @property
    def primary_role(self) -> str:
        return self.groups[0][0]

    def scaled(self, scale: float) -> Workload:
        return dataclasses.replace(self, groups=tuple((role, spec.scaled(scale)) for role, spec in self.groups))


def metric_value(metrics: BenchmarkMetrics, key: str) -> float | None:
    """The number `key` names; None when the group completed no request (or a ratio's p50 is 0)."""
    if metrics.num_completed == 0:
        return None
    if key == ITL_TAIL_RATIO:
        return metrics.itl.p99_ms / metrics.itl.median_ms if metrics.itl.median_ms > 0 else None
    value: object = metrics
    for part in key.split("."):
        value = getattr(value, part)
    if not isinstance(value, int | float):
        raise ValueError(f"key must name a number, got {key!r}")
    return float(value)


_THROUGHPUT = MetricSpec("output tok/s ↑", "main", "output_throughput", higher_is_better=True)
_TTFT_P50 = MetricSpec("TTFT p50 (ms) ↓", "main", "ttft.median_ms", higher_is_better=False)
_TPOT_P50 = MetricSpec("TPOT p50 (ms) ↓", "main", "tpot.median_ms", higher_is_better=False)


def _w2(concurrency: int, seed: int) -> Workload:
    return Workload(
        f"W2-c{concurrency}", "W2", f"throughput at concurrency {concurrency}",
        (("main", RunSpec(64, 256, 128, concurrency, seed)),), (_THROUGHPUT, _TTFT_P50),
    )


W1 = Workload(
    "W1", "W1", "one stream",
    (("main", RunSpec(8, 128, 128, 1, seed=101)),), (_THROUGHPUT, _TPOT_P50),
)
W2_C16 = _w2(16, seed=216)
W2_C32 = _w2(32, seed=232)
W3 = Workload(
    "W3", "W3", "a shared prompt prefix (prefix caching)",
    (("main", RunSpec(32, 432, 64, 16, seed=301, shared_prefix_len=400)),), (_THROUGHPUT, _TTFT_P50),
)
W4 = Workload(
    "W4", "W4",
    "decode streams while long prompts arrive (decode jitter under prefill)",
    (
        ("streams", RunSpec(16, 128, 512, 16, seed=401)),
        ("long", RunSpec(5, 2000, 16, None, seed=402, start_delay_s=2.0, request_rate=0.25, burstiness=100.0)),
    ),
    (
        MetricSpec("output tok/s ↑", "streams", "output_throughput", higher_is_better=True),
        MetricSpec("streams ITL p50 (ms) ↓", "streams", "itl.median_ms", higher_is_better=False),
        MetricSpec("streams ITL p99 (ms) ↓", "streams", "itl.p99_ms", higher_is_better=False),
        MetricSpec("streams ITL p99/p50 ↓", "streams", ITL_TAIL_RATIO, higher_is_better=False),
        MetricSpec("long-prompt TTFT p50 (ms) ↓", "long", "ttft.median_ms", higher_is_better=False),
        MetricSpec("long-prompt TTFT max (ms) ↓", "long", "ttft.max_ms", higher_is_better=False),
    ),
)
WORKLOADS: tuple[Workload, ...] = (W1, W2_C16, W2_C32, W3, W4)
DEFAULT_WORKLOAD_NAMES: tuple[str, ...] = ("W1", "W2", "W3", "W4")

# Goals the table checks (issue targets)
W3_PREFIX_TTFT_GOAL = 0.25  # TTFT p50 with prefix caching / without, at most
W4_ITL_TAIL_GOAL = 3.0  # streams' ITL p99 / p50, at most


def select_workloads(names: Sequence[str], scale: float = 1.0) -> tuple[Workload, ...]:
    """The workloads `names` pick, in the given order, scaled; a family name (W2) picks all its sub-runs."""
    if not names:
        raise ValueError("workloads must name at least one workload")
    chosen: list[Workload] = []
    for name in names:
        matches = [w for w in WORKLOADS if name.upper() in (w.name.upper(), w.family.upper())]
        if not matches:
            known = sorted({w.family for w in WORKLOADS} | {w.name for w in WORKLOADS})
            raise ValueError(f"workloads: unknown workload {name!r}; known: {', '.join(known)}")
        chosen.extend(w for w in matches if w not in chosen)
    return tuple(w.scaled(scale) for w in chosen)
