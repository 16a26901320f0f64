"""YAIE: a paged, continuously batched LLM engine with an OpenAI-compatible server.

Public API: LLM (offline), AsyncEngine (servers), SamplingParams, EngineConfig.
"""

from yaie.config import EngineConfig
from yaie.types import RequestOutput, SamplingParams

__all__ = ["LLM", "AsyncEngine", "EngineConfig", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing yaie must not import torch
    if name == "LLM":
        from yaie.engine.offline import LLM

        return LLM
    if name == "AsyncEngine":
        from yaie.engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
