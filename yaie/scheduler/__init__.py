"""Continuous-batching scheduler (pure Python, never torch): policies, the step contract, the scheduler."""

from yaie.scheduler.output import RequestUpdate, RunnerOutput, ScheduledChunk, SchedulerOutput
from yaie.scheduler.policy import POLICIES, SchedulingPolicy, WaitingQueue, make_policy
from yaie.scheduler.scheduler import Scheduler, SchedulerStats

__all__ = [
    "POLICIES",
    "RequestUpdate",
    "RunnerOutput",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerOutput",
    "SchedulerStats",
    "SchedulingPolicy",
    "WaitingQueue",
    "make_policy",
]
