"""Tests for the Sender: per-record retries, Retry-After, dead letters and attempt limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from tenacity import Future, RetryCallState

from shipper.errors import FatalSinkError, HeldSinkError, RetryableSinkError
from shipper.model import Batch, BatchResult, LogFile, Outcome, RecordGroup
from shipper.pipeline.sender import MAX_RETRY_AFTER, Sender
from shipper.telemetry.counters import Telemetry

D, R, X, DUP, DROP = (
    Outcome.DELIVERED,
    Outcome.RETRY,
    Outcome.DEAD_LETTERED,
    Outcome.DUPLICATE,
    Outcome.DROPPED,
)

Response = BatchResult | BaseException | Callable[[Batch], BatchResult]


class ScriptedSink:
    """Answers each send with the next scripted response; remembers every batch's records."""

    def __init__(self, *responses: Response, default: Response | None = None) -> None:
        self._responses = list(responses)
        self._default = default
        self.sent: list[list[tuple[RecordGroup, int]]] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, batch: Batch) -> BatchResult:
        self.sent.append(list(batch.records()))
        response = self._responses.pop(0) if self._responses else self._default
        if response is None:
            response = BatchResult.uniform(D, len(batch))
        if isinstance(response, BaseException):
            raise response
        if callable(response):
            return response(batch)
        return response


class DeadLetters:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[RecordGroup, int, str]]]] = []

    async def __call__(self, output: str, rejected: list[tuple[RecordGroup, int, str]]) -> None:
        self.calls.append((output, list(rejected)))

    @property
    def records(self) -> list[tuple[RecordGroup, int, str]]:
        return [record for _, rejected in self.calls for record in rejected]


def make_group(count: int, name: str = "g") -> RecordGroup:
    group = RecordGroup(
        file=LogFile("docker", name, f"/logs/{name}.log", name), start=0, end=10 * count
    )
    for n in range(count):
        group.messages.append(f"{name}{n}")
        group.timestamps.append("2024-05-06T07:08:09.000000000Z")
        group.streams.append("stdout")
        group.offsets.append(10 * n)
    return group


def make_sender(
    sink: ScriptedSink,
    *,
    max_attempts: int = 0,
    initial_backoff: float = 0.001,
    max_backoff: float = 0.002,
) -> tuple[Sender, DeadLetters, Telemetry]:
    dead = DeadLetters()
    telemetry = Telemetry()
    sender = Sender(
        "out",
        sink,
        initial_backoff=initial_backoff,
        max_backoff=max_backoff,
        max_attempts=max_attempts,
        dead_letter=dead,
        telemetry=telemetry,
    )
    return sender, dead, telemetry


def records_total(telemetry: Telemetry, outcome: Outcome) -> float:
    return telemetry.value("shipper_records_total", output="out", outcome=outcome.value)


def retry_state(exc: BaseException | None, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt
    if exc is not None:
        state.outcome = Future.construct(attempt, exc, has_exception=True)
    return state


def throttled(retry_after: Any) -> RetryableSinkError:
    exc = RetryableSinkError("429 Too Many Requests")
    exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


async def test_all_delivered_in_one_send() -> None:
    group = make_group(3)
    sink = ScriptedSink()
    sender, dead, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 1
    assert records_total(telemetry, D) == 3
    assert telemetry.value("shipper_retries_total", output="out") == 0
    assert dead.calls == []


async def test_only_records_marked_retry_are_resent() -> None:
    group = make_group(5)
    sink = ScriptedSink(BatchResult([D, R, D, R, DUP]))
    sender, dead, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 2
    assert sink.sent[1] == [(group, 1), (group, 3)]
    assert records_total(telemetry, D) == 4
    assert records_total(telemetry, DUP) == 1
    assert telemetry.value("shipper_retries_total", output="out") == 1
    assert dead.calls == []


async def test_retry_subset_across_groups_and_rounds() -> None:
    a, b, c = make_group(3, "a"), make_group(2, "b"), make_group(2, "c")
    sink = ScriptedSink(
        BatchResult([R, D, R, D, D, R, R]),  # a0 a1 a2 b0 b1 c0 c1
        BatchResult([D, R, D, R]),  # a0 a2 c0 c1
    )
    sender, _, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([a, b, c]))
    assert sink.sent[1] == [(a, 0), (a, 2), (c, 0), (c, 1)]
    assert sink.sent[2] == [(a, 2), (c, 1)]
    assert len(sink.sent) == 3
    assert records_total(telemetry, D) == 7
    assert telemetry.value("shipper_retries_total", output="out") == 2


async def test_retryable_error_resends_the_whole_pending_batch() -> None:
    group = make_group(3)
    sink = ScriptedSink(RetryableSinkError("connection reset"), BatchResult([D, R, D]))
    sender, _, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([group]))
    assert sink.sent[0] == sink.sent[1] == [(group, 0), (group, 1), (group, 2)]
    assert sink.sent[2] == [(group, 1)]
    assert records_total(telemetry, D) == 3
    assert telemetry.value("shipper_retries_total", output="out") == 2


async def test_awaiting_ack_is_not_final_and_acknowledged_result_decides() -> None:
    group = make_group(3)

    async def ack() -> BatchResult:
        return BatchResult([D, R, DUP])

    sink = ScriptedSink(
        BatchResult([Outcome.AWAITING_ACK] * 3, acknowledged=ack()),
    )
    sender, _, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([group]))
    assert sink.sent[1] == [(group, 1)]
    assert records_total(telemetry, D) == 2
    assert records_total(telemetry, DUP) == 1


def test_wait_honours_retry_after_above_backoff() -> None:
    sender, _, _ = make_sender(ScriptedSink(), initial_backoff=0.001, max_backoff=0.002)
    assert sender._wait(retry_state(throttled(0.05))) == pytest.approx(0.05)
    assert sender._wait(retry_state(throttled(7))) == 7.0


def test_wait_keeps_backoff_when_retry_after_is_shorter_or_absent() -> None:
    sender, _, _ = make_sender(ScriptedSink(), initial_backoff=0.001, max_backoff=0.002)
    for exc in (throttled(0.0), throttled(0.0001), throttled(None), throttled("120"), None):
        delay = sender._wait(retry_state(exc))
        assert 0 <= delay <= 0.002
    delay = sender._wait(retry_state(RetryableSinkError("plain")))
    assert 0 <= delay <= 0.002


def test_wait_caps_a_hostile_retry_after() -> None:
    sender, _, _ = make_sender(ScriptedSink())
    assert sender._wait(retry_state(throttled(86_400))) == MAX_RETRY_AFTER


async def test_deliver_sleeps_what_retry_after_asks(caplog: pytest.LogCaptureFixture) -> None:
    group = make_group(2)
    sink = ScriptedSink(throttled(0.03))
    sender, _, telemetry = make_sender(sink, initial_backoff=0.001, max_backoff=0.002)
    with caplog.at_level(logging.WARNING, logger="shipper.pipeline.sender"):
        await sender.deliver(Batch.of([group]))
    retries = [r for r in caplog.records if r.getMessage() == "Output failed; retrying."]
    assert len(retries) == 1
    assert retries[0].delay_s == 0.03  # type: ignore[attr-defined]
    assert retries[0].output == "out"  # type: ignore[attr-defined]
    assert len(sink.sent) == 2
    assert records_total(telemetry, D) == 2
    assert telemetry.value("shipper_retries_total", output="out") == 1


async def test_dead_lettered_outcomes_go_to_the_dead_letter_callback_with_reasons() -> None:
    group = make_group(4)
    sink = ScriptedSink(BatchResult([D, X, X, D], reasons={1: "mapper_parsing_exception"}))
    sender, dead, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 1
    assert dead.calls == [
        ("out", [(group, 1, "mapper_parsing_exception"), (group, 2, "rejected by the output")])
    ]
    assert records_total(telemetry, X) == 2
    assert records_total(telemetry, D) == 2


async def test_dead_letter_reason_index_is_the_position_in_the_retried_batch() -> None:
    group = make_group(3)
    sink = ScriptedSink(
        BatchResult([D, R, R]),
        BatchResult([X, D], reasons={0: "400 bad document"}),
    )
    sender, dead, telemetry = make_sender(sink)
    await sender.deliver(Batch.of([group]))
    assert dead.records == [(group, 1, "400 bad document")]
    assert records_total(telemetry, X) == 1
    assert records_total(telemetry, D) == 2


async def test_max_attempts_dead_letters_every_record_never_drops() -> None:
    group = make_group(3)
    sink = ScriptedSink(default=RetryableSinkError("503 Service Unavailable"))
    sender, dead, telemetry = make_sender(sink, max_attempts=3)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 3
    assert [(g, i) for g, i, _ in dead.records] == [(group, 0), (group, 1), (group, 2)]
    for _, _, reason in dead.records:
        assert "3 attempts" in reason
        assert "503" in reason
    assert records_total(telemetry, X) == 3
    assert records_total(telemetry, D) == 0
    assert telemetry.value("shipper_retries_total", output="out") == 2


async def test_max_attempts_dead_letters_only_what_is_still_pending() -> None:
    group = make_group(4)
    sink = ScriptedSink(BatchResult([D, R, DUP, R]), default=RetryableSinkError("timeout"))
    sender, dead, telemetry = make_sender(sink, max_attempts=2)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 2
    assert [(g, i) for g, i, _ in dead.records] == [(group, 1), (group, 3)]
    assert all("2 attempts" in reason for _, _, reason in dead.records)
    assert records_total(telemetry, D) == 1
    assert records_total(telemetry, DUP) == 1
    assert records_total(telemetry, X) == 2


async def test_max_attempts_when_records_keep_coming_back_retry() -> None:
    group = make_group(2)
    sink = ScriptedSink(default=lambda batch: BatchResult.uniform(R, len(batch)))
    sender, dead, telemetry = make_sender(sink, max_attempts=3)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 3
    assert [(g, i) for g, i, _ in dead.records] == [(group, 0), (group, 1)]
    assert all("3 attempts" in reason for _, _, reason in dead.records)
    assert records_total(telemetry, X) == 2


async def test_duplicate_and_dropped_are_final() -> None:
    group = make_group(4)
    sink = ScriptedSink(BatchResult([DUP, DUP, DROP, D]))
    sender, dead, telemetry = make_sender(sink, max_attempts=1)
    await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 1
    assert records_total(telemetry, DUP) == 2
    assert records_total(telemetry, DROP) == 1
    assert records_total(telemetry, D) == 1
    assert dead.calls == []


@pytest.mark.parametrize("count", [0, 2, 4])
async def test_wrong_number_of_outcomes_is_a_runtime_error(count: int) -> None:
    group = make_group(3)
    sink = ScriptedSink(BatchResult.uniform(D, count))
    sender, dead, telemetry = make_sender(sink)
    with pytest.raises(RuntimeError, match=f"reported {count} outcomes for 3 records"):
        await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 1  # not retried
    assert records_total(telemetry, D) == 0
    assert dead.calls == []


async def test_fatal_error_is_raised_not_retried_nor_dead_lettered() -> None:
    group = make_group(2)
    sink = ScriptedSink(FatalSinkError("401 Unauthorized"))
    sender, dead, _ = make_sender(sink, max_attempts=5)
    with pytest.raises(FatalSinkError):
        await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 1
    assert dead.calls == []


async def test_empty_batch_completes() -> None:
    sink = ScriptedSink()
    sender, dead, _ = make_sender(sink)
    await asyncio.wait_for(sender.deliver(Batch.of([])), 2)
    assert dead.calls == []


async def test_a_refusal_only_an_operator_can_fix_is_held_past_max_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Credentials rejected five times with max_attempts 2: still retried, said at error level
    every time, never dead-lettered; delivered once fixed."""
    group = make_group(2)
    refused = HeldSinkError("401 Unauthorized: the API key is not valid")
    sink = ScriptedSink(*([refused] * 5))
    sender, dead, telemetry = make_sender(sink, max_attempts=2)
    with caplog.at_level(logging.ERROR, logger="shipper.pipeline.sender"):
        await sender.deliver(Batch.of([group]))
    assert len(sink.sent) == 6
    assert dead.records == []
    assert records_total(telemetry, D) == 2
    assert telemetry.value("shipper_output_held_total", output="out") == 5
    held = [r for r in caplog.records if "holding it" in r.getMessage()]
    assert len(held) == 5
    assert all(r.levelno == logging.ERROR for r in held)


async def test_records_held_by_the_destination_are_resent_alone_past_max_attempts() -> None:
    """Per-record refusals (a missing index, no privilege on one target) come back RETRY with
    `held` set: the others are final at once, the held ones resent without limit."""
    group = make_group(3)
    held = BatchResult([D, R, D], held="index_not_found_exception")
    sink = ScriptedSink(
        held, BatchResult([R], held="index_not_found_exception"), BatchResult([R], held="x")
    )
    sender, dead, telemetry = make_sender(sink, max_attempts=1)
    await sender.deliver(Batch.of([group]))
    assert [[index for _, index in sent] for sent in sink.sent] == [[0, 1, 2], [1], [1], [1]]
    assert dead.records == []
    assert records_total(telemetry, D) == 3
