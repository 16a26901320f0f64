"""Batched sampling: `SamplingMetadata` (per-step tensors built from requests) and `Sampler`."""

from yaie.sampling.metadata import SamplingMetadata
from yaie.sampling.sampler import Sampler, SamplerOutput

__all__ = ["Sampler", "SamplerOutput", "SamplingMetadata"]
