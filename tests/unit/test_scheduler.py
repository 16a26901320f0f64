"""Scheduler: token budget, chunked prefill, preemption, priority, max_num_seqs, timeouts, aborts, siblings.

The scheduler is driven exactly as the engine drives it: schedule() -> a hand-built RunnerOutput (fake
sampled tokens) -> update().
"""

from __future__ import annotations

import random

import pytest

from yaie.config import CacheConfig, SchedulerConfig
from yaie.scheduler import RequestUpdate, RunnerOutput, Scheduler, SchedulerOutput
from yaie.types import FinishReason, Request, RequestStatus

BLOCK_SIZE = 4
SAMPLED_TOKEN = 7  # not an EOS token (the factory's EOS is 2)


def make_scheduler(num_blocks: int = 32, *, clock=None, enable_prefix_caching: bool = True,
                   **scheduler_options) -> Scheduler:
    scheduler_options.setdefault("max_num_batched_tokens", 64)
    scheduler_config = SchedulerConfig(**scheduler_options)
    cache_config = CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=enable_prefix_caching)
    if clock is None:
        return Scheduler(scheduler_config, cache_config, num_blocks)
    return Scheduler(scheduler_config, cache_config, num_blocks, clock=clock)


def step(scheduler: Scheduler, tokens: dict[str, int] | None = None
         ) -> tuple[SchedulerOutput, list[RequestUpdate]]:
    """One engine step; chunks that need a sample get tokens[request_id] (default SAMPLED_TOKEN)."""
    output = scheduler.schedule()
    sampled = [(tokens or {}).get(c.request.request_id, SAMPLED_TOKEN) if c.needs_sample else None
               for c in output.chunks]
    return output, scheduler.update(output, RunnerOutput(sampled, [None] * len(sampled)))


def chunks(output: SchedulerOutput) -> list[tuple[str, int, int]]:
    """(request_id, start_position, num_tokens) per chunk."""
    return [(c.request.request_id, c.start_position, c.num_tokens) for c in output.chunks]


def seq(start: int, num_tokens: int) -> list[int]:
    return list(range(start, start + num_tokens))


def test_budget_goes_to_running_first_then_waiting(make_request) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add_request(make_request("a", seq(100, 6)))
    scheduler.add_request(make_request("b", seq(200, 6)))
    output, updates = step(scheduler)
    assert chunks(output) == [("a", 0, 6), ("b", 0, 4)]  # b's prefill is chunked by the budget
    assert [c.block_ids for c in output.chunks] == [[0, 1], [2]]
    assert [c.needs_sample for c in output.chunks] == [True, False]
    assert [(u.request.request_id, u.new_token_ids) for u in updates] == [("a", [SAMPLED_TOKEN])]
    assert output.num_batched_tokens == 10

    scheduler.add_request(make_request("c", seq(300, 10)))
    output, _ = step(scheduler)
    assert chunks(output) == [("a", 6, 1), ("b", 4, 2), ("c", 0, 7)]  # decode + prefill chunks in one step
    assert [c.block_ids for c in output.chunks] == [[0, 1], [2, 3], [4, 5]]
    assert output.chunks[0].token_ids == [SAMPLED_TOKEN]
    assert output.chunks[1].token_ids == [204, 205]


def test_chunked_prefill_over_several_steps(make_request) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=4)
    request = make_request("a", 10, max_tokens=2)
    scheduler.add_request(request)
    expected = [(("a", 0, 4), [0], False), (("a", 4, 4), [0, 1], False), (("a", 8, 2), [0, 1, 2], True)]
    for chunk_summary, block_ids, needs_sample in expected:
        output, updates = step(scheduler)
        assert chunks(output) == [chunk_summary]
        assert output.chunks[0].block_ids == block_ids
        assert output.chunks[0].needs_sample is needs_sample
        assert request.num_computed_tokens == chunk_summary[1] + chunk_summary[2]
    assert updates[0].new_token_ids == [SAMPLED_TOKEN] and request.num_output_tokens == 1
    output, updates = step(scheduler)
    assert chunks(output) == [("a", 10, 1)]
    assert updates[0].finish_reason is FinishReason.LENGTH
    assert request.output_token_ids == [SAMPLED_TOKEN, SAMPLED_TOKEN]
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.num_free_blocks == 32


def test_schedule_does_not_advance_counters(make_request) -> None:
    scheduler = make_scheduler()
    request = make_request("a", 5)
    scheduler.add_request(request)
    scheduler.schedule()
    assert request.num_computed_tokens == 0 and request.status is RequestStatus.RUNNING
    assert request.times.first_scheduled is not None and request.num_cached_tokens == 0


def test_fcfs_preempts_the_newest_and_resumes_with_its_cached_blocks(make_request) -> None:
    scheduler = make_scheduler(num_blocks=4)
    a = make_request("a", seq(100, 8), max_tokens=3)
    b = make_request("b", seq(200, 8))
    scheduler.add_request(a)
    scheduler.add_request(b)
    output, _ = step(scheduler)
    assert [c.block_ids for c in output.chunks] == [[0, 1], [2, 3]]
    late = make_request("late", seq(600, 4))
    scheduler.add_request(late)

    output, _ = step(scheduler)  # a needs a 3rd block: b (newest) is preempted, freed tail first
    assert chunks(output) == [("a", 8, 1)] and output.preempted_request_ids == ["b"]
    assert output.chunks[0].block_ids == [0, 1, 3]
    assert (b.status, b.num_computed_tokens, b.num_preemptions) == (RequestStatus.PREEMPTED, 0, 1)
    assert scheduler.num_waiting == 2 and scheduler.stats().num_preemptions_total == 1

    # b, back at the front of the queue, does not fit yet (2 new blocks); "late" may not jump ahead of it.
    output, updates = step(scheduler)
    assert chunks(output) == [("a", 9, 1)] and updates[0].finish_reason is FinishReason.LENGTH

    output, _ = step(scheduler)  # b's first block (block 2) survived in the cache: recompute from token 4
    assert chunks(output) == [("b", 4, 5), ("late", 0, 4)]
    assert [c.block_ids for c in output.chunks] == [[2, 3, 1], [0]]
    assert output.chunks[0].token_ids == [204, 205, 206, 207, SAMPLED_TOKEN]
    assert b.num_cached_tokens == 0  # recorded on first schedule only


def _fill_cache_with_low_priority_a_then_b(policy: str, make_request) -> tuple[Scheduler, Request, Request]:
    """a (priority 1) then b (priority 0) running, 5 blocks all used; next step a needs a 3rd block."""
    scheduler = make_scheduler(num_blocks=5, policy=policy)
    a = make_request("a", seq(100, 6), priority=1)
    b = make_request("b", seq(200, 8), priority=0)
    scheduler.add_request(a)
    step(scheduler)
    scheduler.add_request(b)
    step(scheduler)
    step(scheduler)
    assert (scheduler.get_block_ids("a"), scheduler.get_block_ids("b")) == ([0, 1], [2, 3, 4])
    assert (a.num_tokens, b.num_tokens) == (9, 10)
    return scheduler, a, b


def test_fcfs_victim_is_the_last_running_request(make_request) -> None:
    scheduler, a, b = _fill_cache_with_low_priority_a_then_b("fcfs", make_request)
    output, _ = step(scheduler)
    assert output.preempted_request_ids == ["b"]
    assert chunks(output) == [("a", 8, 1)] and output.chunks[0].block_ids == [0, 1, 4]
    assert (a.status, b.status) == (RequestStatus.RUNNING, RequestStatus.PREEMPTED)


def test_priority_victim_is_the_worst_priority_even_if_it_is_the_requester(make_request) -> None:
    scheduler, a, b = _fill_cache_with_low_priority_a_then_b("priority", make_request)
    output, _ = step(scheduler)
    assert output.preempted_request_ids == ["a"]
    assert chunks(output) == [("b", 9, 1)]  # requests after the self-preempted one still run
    assert (a.status, b.status) == (RequestStatus.PREEMPTED, RequestStatus.RUNNING)
    assert scheduler.kv_cache_manager.num_free_blocks == 2


def test_higher_priority_arrival_preempts_a_running_request(make_request) -> None:
    scheduler = make_scheduler(num_blocks=4, policy="priority")
    scheduler.add_request(make_request("a", seq(100, 6), priority=1))
    scheduler.add_request(make_request("b", seq(200, 6), priority=1))
    step(scheduler)
    scheduler.add_request(make_request("same", seq(400, 4), priority=1))  # equal priority: waits
    scheduler.add_request(make_request("c", seq(300, 8), priority=0))
    output, _ = step(scheduler)
    assert chunks(output) == [("a", 6, 1), ("c", 0, 8)]  # b's decode chunk is withdrawn
    assert output.preempted_request_ids == ["b"]
    assert output.chunks[1].block_ids == [3, 2]
    assert [r.request_id for r in scheduler.waiting_requests()] == ["b", "same"]


def test_max_num_seqs_caps_running_requests(make_request) -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    for request_id in "abc":
        scheduler.add_request(make_request(request_id, 4, max_tokens=1 if request_id == "a" else 4))
    output, _ = step(scheduler)
    assert [rid for rid, _, _ in chunks(output)] == ["a", "b"] and scheduler.num_waiting == 1
    output, _ = step(scheduler)  # a finished after one token: c takes its seat
    assert [rid for rid, _, _ in chunks(output)] == ["b", "c"]


def test_priority_arrival_takes_a_seat_from_a_lower_priority_request(make_request) -> None:
    scheduler = make_scheduler(max_num_seqs=1, policy="priority", max_num_batched_tokens=4)
    scheduler.add_request(make_request("low", 4, priority=5))
    step(scheduler)
    scheduler.add_request(make_request("high", seq(50, 4), priority=0))
    output, _ = step(scheduler)
    # low's decode chunk is withdrawn and its token returned to the budget: high gets all 4
    assert chunks(output) == [("high", 0, 4)] and output.preempted_request_ids == ["low"]


def test_waiting_request_times_out(make_request, clock) -> None:
    scheduler = make_scheduler(max_num_seqs=1, queue_timeout_s=5.0, clock=clock)
    running = make_request("running", 4, arrival=0.0, max_tokens=100)
    waiting = make_request("waiting", seq(10, 4), arrival=1.0)
    scheduler.add_request(running)
    scheduler.add_request(waiting)
    step(scheduler)  # at t=0 "running" gets the only seat
    clock.now = 6.0  # 5 s since waiting's arrival: not yet
    output, _ = step(scheduler)
    assert output.timed_out_requests == []
    clock.now = 6.5
    output, updates = step(scheduler)
    assert output.timed_out_requests == [waiting] and chunks(output) == [("running", 5, 1)]
    assert (waiting.status, waiting.finish_reason, waiting.times.finished) == (
        RequestStatus.FINISHED, FinishReason.TIMEOUT, 6.5)
    assert [(u.request.request_id, u.finish_reason) for u in updates] == [
        ("waiting", FinishReason.TIMEOUT), ("running", None)]
    assert running.times.first_token == 0.0 and running.times.last_token == 6.5
    assert scheduler.num_waiting == 0


def test_finish_requests_frees_waiting_and_running_requests(make_request) -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    running = make_request("running", 9)
    scheduler.add_request(running)
    scheduler.add_request(make_request("waiting", 4))
    output = scheduler.schedule()
    finished = scheduler.finish_requests(["running", "waiting", "unknown"], FinishReason.ABORT)
    assert [r.request_id for r in finished] == ["running", "waiting"]
    assert all(r.finish_reason is FinishReason.ABORT and r.is_finished for r in finished)
    assert scheduler.kv_cache_manager.num_free_blocks == 32 and not scheduler.has_unfinished_requests()
    # The aborted request's in-flight chunk is ignored when its result arrives.
    assert scheduler.update(output, RunnerOutput([SAMPLED_TOKEN], [None])) == []
    assert running.output_token_ids == [] and scheduler.finish_requests(["running"], FinishReason.ABORT) == []


def test_n_siblings_share_the_prompt_blocks(make_request) -> None:
    scheduler = make_scheduler()
    siblings = [make_request(f"s{i}", 10, group_id="g", max_tokens=2) for i in range(3)]
    for request in siblings:
        scheduler.add_request(request)
    scheduler.add_request(make_request("other", seq(500, 3), max_tokens=2))
    output, _ = step(scheduler)
    assert chunks(output) == [("s0", 0, 10), ("other", 0, 3)]  # s1, s2 wait; other does not
    output, _ = step(scheduler)
    assert chunks(output) == [("s0", 10, 1), ("other", 3, 1), ("s1", 8, 2), ("s2", 8, 2)]
    assert [c.block_ids for c in output.chunks] == [[0, 1, 2], [3], [0, 1, 4], [0, 1, 5]]
    assert (siblings[1].num_cached_tokens, siblings[2].num_cached_tokens) == (8, 8)
    assert scheduler.stats().prefix_hits_tokens == 16
    while scheduler.has_unfinished_requests():
        step(scheduler)
    assert scheduler.kv_cache_manager.num_free_blocks == 32


def test_requests_sharing_a_prefix_wait_for_the_first_to_compute_it(make_request) -> None:
    scheduler = make_scheduler()
    shared = seq(100, 12)  # three full blocks
    first, second = (make_request(rid, shared + seq(base, 3), max_tokens=1) for rid, base in
                     (("a", 200), ("b", 300)))
    scheduler.add_request(first)
    scheduler.add_request(second)
    scheduler.add_request(make_request("c", seq(400, 5), max_tokens=1))
    output, _ = step(scheduler)
    assert chunks(output) == [("a", 0, 15), ("c", 0, 5)]  # b would recompute a's blocks: it waits
    output, _ = step(scheduler)
    assert chunks(output) == [("b", 12, 3)]
    assert second.num_cached_tokens == 12
    assert scheduler.stats().prefix_hits_tokens == 12


def test_a_request_waits_only_while_its_next_block_is_pending(make_request) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    shared = seq(100, 16)
    first = make_request("a", [*shared, 1], max_tokens=1)
    second = make_request("b", shared[:8] + seq(300, 9), max_tokens=1)
    scheduler.add_request(first)
    output, _ = step(scheduler)
    assert chunks(output) == [("a", 0, 8)]
    scheduler.add_request(second)
    output, _ = step(scheduler)  # b's first 8 tokens are cached; its next block is its own
    assert chunks(output) == [("a", 8, 8)]  # the budget, not b's prefix, keeps b out
    output, _ = step(scheduler)
    assert chunks(output) == [("a", 16, 1), ("b", 8, 7)]
    assert second.num_cached_tokens == 8


def test_prefill_tokens_are_capped_while_requests_decode(make_request) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=32, max_num_prefill_tokens=8)
    scheduler.add_request(make_request("long", seq(100, 40), max_tokens=2))
    output, _ = step(scheduler)
    assert chunks(output) == [("long", 0, 32)]  # nobody decodes: the whole budget
    scheduler.add_request(make_request("s1", seq(200, 3), max_tokens=8))
    scheduler.add_request(make_request("s2", seq(300, 3), max_tokens=8))
    output, _ = step(scheduler)
    assert chunks(output) == [("long", 32, 8), ("s1", 0, 3), ("s2", 0, 3)]
    output, _ = step(scheduler)
    assert chunks(output) == [("long", 40, 1), ("s1", 3, 1), ("s2", 3, 1)]
    scheduler.add_request(make_request("next", seq(400, 20), max_tokens=1))
    output, _ = step(scheduler)
    assert chunks(output) == [("s1", 4, 1), ("s2", 4, 1), ("next", 0, 8)]  # long finished; s1/s2 decode
    assert output.num_batched_tokens == 10


def test_prefill_allowance_grows_with_the_number_of_decoding_requests(make_request) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=64, max_num_prefill_tokens=4, prefill_tokens_per_decode=2,
                               prefill_context_cost_len=None)
    for i in range(3):
        scheduler.add_request(make_request(f"s{i}", seq(100 * (i + 1), 3), max_tokens=8))
    step(scheduler)  # the three prompts; nobody decoded yet
    scheduler.add_request(make_request("long", seq(900, 40), max_tokens=1))
    output, _ = step(scheduler)
    assert chunks(output)[-1] == ("long", 0, 6)  # max(4, 2 x 3 decoding)
    output, _ = step(scheduler)
    assert chunks(output)[-1] == ("long", 6, 6)


def test_prompt_chunks_shrink_with_the_context_they_attend_to(make_request) -> None:
    scheduler = make_scheduler(num_blocks=64, max_num_batched_tokens=64, max_num_prefill_tokens=16,
                               prefill_tokens_per_decode=0, prefill_context_cost_len=32)
    scheduler.add_request(make_request("stream", 3, max_tokens=40))
    step(scheduler)  # its prompt, alone: no cap
    scheduler.add_request(make_request("long", seq(900, 120), max_tokens=1))
    starts_and_sizes = []
    for _ in range(6):
        output, _ = step(scheduler)
        starts_and_sizes.append(chunks(output)[-1][1:])
    # each token from position P costs 1 + P / 32 of the 16-token allowance
    assert starts_and_sizes == [(0, 16), (16, 10), (26, 8), (34, 7), (41, 7), (48, 6)]
    scheduler = make_scheduler(num_blocks=64, max_num_batched_tokens=64, prefill_context_cost_len=32)
    scheduler.add_request(make_request("alone", seq(900, 120), max_tokens=1))
    output, _ = step(scheduler)
    assert chunks(output) == [("alone", 0, 64)]  # nobody decodes: no cap, no context cost


def test_a_prompt_deeper_than_its_allowance_still_advances(make_request) -> None:
    scheduler = make_scheduler(num_blocks=64, max_num_batched_tokens=64, max_num_prefill_tokens=4,
                               prefill_tokens_per_decode=0, prefill_context_cost_len=1)
    scheduler.add_request(make_request("stream", 3, max_tokens=40))
    step(scheduler)
    scheduler.add_request(make_request("long", seq(900, 30), max_tokens=1))
    sizes = [chunks(step(scheduler)[0])[-1][1:] for _ in range(4)]
    assert sizes == [(0, 4), (4, 1), (5, 1), (6, 1)]  # from position 4 one token costs 5 > 4: one per step


def test_stop_conditions(make_request) -> None:
    cases = [
        (dict(stop_token_ids=(9,)), [5, 9], FinishReason.STOP, 9),
        (dict(), [5, 2], FinishReason.STOP, None),  # EOS
        (dict(ignore_eos=True, max_tokens=3), [2, 2, 2], FinishReason.LENGTH, None),
        (dict(min_tokens=2), [2, 9, 2], FinishReason.STOP, None),  # EOS ignored below min_tokens
        (dict(min_tokens=2, stop_token_ids=(9,)), [9, 9], FinishReason.STOP, 9),
        (dict(max_tokens=2), [5, 5], FinishReason.LENGTH, None),
        (dict(max_tokens=None, max_model_len=6), [5, 5], FinishReason.LENGTH, None),
    ]
    for options, sampled, reason, stop_reason in cases:
        scheduler = make_scheduler()
        request = make_request("a", 4, **options)
        scheduler.add_request(request)
        for token in sampled:
            _, updates = step(scheduler, {"a": token})
        assert (request.output_token_ids, updates[0].finish_reason) == (sampled, reason), options
        assert (request.finish_reason, request.stop_reason) == (reason, stop_reason), options
        assert request.times.finished is not None and scheduler.kv_cache_manager.num_free_blocks == 32


def test_bad_input_raises_value_errors(make_request) -> None:
    scheduler = make_scheduler(num_blocks=2)
    scheduler.add_request(make_request("a", 4))
    with pytest.raises(ValueError, match="request_id"):
        scheduler.add_request(make_request("a", 4))
    with pytest.raises(ValueError, match="prompt_token_ids"):
        scheduler.add_request(make_request("empty", []))
    with pytest.raises(ValueError, match="capacity"):
        scheduler.add_request(make_request("long", 9))
    output = scheduler.schedule()
    with pytest.raises(ValueError, match="one entry per chunk"):
        scheduler.update(output, RunnerOutput([], []))
    with pytest.raises(ValueError, match="needs_sample"):
        scheduler.update(output, RunnerOutput([None], [None]))
    with pytest.raises(ValueError, match="policy"):
        make_scheduler(policy="fair")


def test_random_workload_keeps_invariants_and_returns_every_block(make_request) -> None:
    rng = random.Random(0)
    scheduler = make_scheduler(num_blocks=12, max_num_batched_tokens=16, max_num_seqs=4, policy="priority")
    next_id = 0
    for _ in range(300):
        if rng.random() < 0.3:
            prompt = [rng.randrange(3, 8) for _ in range(rng.randrange(1, 20))]
            scheduler.add_request(make_request(f"r{next_id}", prompt, max_tokens=rng.randrange(1, 12),
                                               priority=rng.randrange(3), ignore_eos=True))
            next_id += 1
        if rng.random() < 0.05:
            scheduler.finish_requests([f"r{rng.randrange(next_id or 1)}"], FinishReason.ABORT)
        output = scheduler.schedule()
        assert output.num_batched_tokens <= 16 and len(output.chunks) <= 4
        for chunk in output.chunks:
            end = chunk.start_position + chunk.num_tokens
            assert chunk.start_position == chunk.request.num_computed_tokens
            assert chunk.token_ids == chunk.request.all_token_ids[chunk.start_position:end]
            assert len(chunk.block_ids) * BLOCK_SIZE >= end
            assert chunk.needs_sample == (end == chunk.request.num_tokens)
        sampled = [SAMPLED_TOKEN if c.needs_sample else None for c in output.chunks]
        scheduler.update(output, RunnerOutput(sampled, [None] * len(sampled)))
    while scheduler.has_unfinished_requests():
        step(scheduler)
    assert scheduler.kv_cache_manager.num_free_blocks == 12
    assert scheduler.stats().kv_cache_usage == 0.0 and scheduler.stats().num_preemptions_total > 0


def test_scheduler_and_kv_cache_never_import_torch() -> None:
    import pathlib

    import yaie

    package_root = pathlib.Path(yaie.__file__).parent
    for path in [*package_root.glob("scheduler/*.py"), *package_root.glob("kv_cache/*.py")]:
        source = path.read_text()
        assert "import torch" not in source and "from torch" not in source, path
