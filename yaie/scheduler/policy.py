"""Scheduling policies: the order of the waiting queue, and who is preempted first.

A policy is chosen by name from `POLICIES` (`SchedulerConfig.policy`). Its contract:
- `make_waiting_queue()` returns an empty queue iterating in the order waiting requests are admitted;
- `pick_victim(running)` names the running request to preempt first when blocks run out;
- `may_preempt(waiting, victim)` says whether a waiting request may evict a running one to get in.
A later policy (e.g. `fair`, ordering by per-tenant usage) only needs its own queue and these two rules.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from yaie.types import Request


class WaitingQueue(ABC):
    """Waiting requests in admission order. `add_front` is for preempted requests, which go first."""

    @abstractmethod
    def add(self, request: Request) -> None: ...

    @abstractmethod
    def add_front(self, request: Request) -> None: ...

    @abstractmethod
    def remove(self, request: Request) -> None:
        """Remove a queued request; ValueError if it is not queued."""

    @abstractmethod
    def __iter__(self) -> Iterator[Request]: ...

    @abstractmethod
    def __len__(self) -> int: ...


class FcfsQueue(WaitingQueue):
    """Arrival order (the order of `add`); `add_front` puts a request before all others. O(1) operations."""

    def __init__(self) -> None:
        self._requests: OrderedDict[str, Request] = OrderedDict()

    def add(self, request: Request) -> None:
        self._requests[request.request_id] = request

    def add_front(self, request: Request) -> None:
        self._requests[request.request_id] = request
        self._requests.move_to_end(request.request_id, last=False)

    def remove(self, request: Request) -> None:
        if self._requests.get(request.request_id) is not request:
            raise ValueError(f"request {request.request_id!r} is not waiting")
        del self._requests[request.request_id]

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._requests.values()))

    def __len__(self) -> int:
        return len(self._requests)


class PriorityQueue(WaitingQueue):
    """Ordered by (priority, arrival time, insertion); a preempted request takes its place by that key,
    which puts it before every later arrival of its priority."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()

    def add(self, request: Request) -> None:
        entry = (request.priority, request.times.arrival, next(self._counter), request)
        bisect.insort(self._entries, entry, key=lambda e: e[:3])

    def add_front(self, request: Request) -> None:
        self.add(request)

    def remove(self, request: Request) -> None:
        for index, entry in enumerate(self._entries):
            if entry[3] is request:
                del self._entries[index]
                return
        raise ValueError(f"request {request.request_id!r} is not waiting")

    def __iter__(self) -> Iterator[Request]:
        return iter([entry[3] for entry in self._entries])

    def __len__(self) -> int:
        return len(self._entries)


class SchedulingPolicy(ABC):
    name: str

    @abstractmethod
    def make_waiting_queue(self) -> WaitingQueue: ...

    @abstractmethod
    def pick_victim(self, running: Sequence[Request]) -> Request:
        """The running request to preempt first (`running` is non-empty, in scheduling order)."""

    @abstractmethod
    def may_preempt(self, waiting: Request, victim: Request) -> bool:
        """Whether `waiting` may preempt the running `victim` to be admitted."""


class FcfsPolicy(SchedulingPolicy):
    """First come, first served: the newest running request is preempted; waiting ones never preempt."""

    name = "fcfs"

    def make_waiting_queue(self) -> WaitingQueue:
        return FcfsQueue()

    def pick_victim(self, running: Sequence[Request]) -> Request:
        return running[-1]

    def may_preempt(self, waiting: Request, victim: Request) -> bool:
        return False


class PriorityPolicy(SchedulingPolicy):
    """Lower `priority` value first, then arrival. The victim is the worst (priority, arrival) running
    request (the later-scheduled on a tie); a waiting request of strictly better priority may preempt it."""

    name = "priority"

    def make_waiting_queue(self) -> WaitingQueue:
        return PriorityQueue()

    def pick_victim(self, running: Sequence[Request]) -> Request:
        _, _, victim_index = max((r.priority, r.times.arrival, i) for i, r in enumerate(running))
        return running[victim_index]

    def may_preempt(self, waiting: Request, victim: Request) -> bool:
        return waiting.priority < victim.priority


POLICIES: dict[str, type[SchedulingPolicy]] = {
    FcfsPolicy.name: FcfsPolicy,
    PriorityPolicy.name: PriorityPolicy,
}


def make_policy(name: str) -> SchedulingPolicy:
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name]()
