"""Sender: the one place that retries, so every record of a batch reaches a final outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import StopBaseT

from shipper.errors import HeldSinkError, RetryableSinkError
from shipper.model import FINAL_OUTCOMES, Batch, BatchResult, Outcome, RecordGroup, Rejection
from shipper.sinks import Sink
from shipper.telemetry.counters import Telemetry

log = logging.getLogger(__name__)

# A record refused for good: its group, its index there, and why.
Rejected = tuple[RecordGroup, int, str | Rejection]

# A server's Retry-After is honoured, but a hostile one cannot park an output for a day.
MAX_RETRY_AFTER = 300.0


class Sender:
    """Sends a batch until every record is final; only the records marked RETRY are resent.

    Final outcomes are DELIVERED, DUPLICATE, DEAD_LETTERED (written to the dead-letter file
    first) and DROPPED. Whole-request failures raise RetryableSinkError and are retried with
    exponential backoff and jitter, honouring a server's Retry-After, forever by default; with a
    limit, the records still pending when it is reached are dead-lettered, never dropped.
    """

    def __init__(
        self,
        output: str,
        sink: Sink,
        *,
        initial_backoff: float,
        max_backoff: float,
        max_attempts: int,
        dead_letter: Callable[[str, list[Rejected]], Awaitable[None]],
        telemetry: Telemetry,
    ) -> None:
        self.output = output
        self._sink = sink
        # "Full jitter": a random wait up to the exponential bound, so many shippers retrying
        # the same destination spread out instead of arriving together.
        self._backoff = wait_random_exponential(multiplier=initial_backoff, max=max_backoff)
        self._limit: StopBaseT = (
            stop_never if max_attempts == 0 else stop_after_attempt(max_attempts)
        )
        self._dead_letter = dead_letter
        self._telemetry = telemetry
        # When (time.monotonic()) the first attempt failed since the last one that got records
        # to a final outcome; None while the output delivers. Readiness and
        # shipper_output_failing_seconds read it (from the metrics endpoint's thread too).
        self.failing_since: float | None = None

    async def deliver(self, batch: Batch, on_accepted: Callable[[], None] | None = None) -> None:
        """Return once every record of `batch` has a final outcome at this output.

        `on_accepted` runs when the destination took the batch and only its confirmation is
        awaited (indexer acknowledgement): the caller may start the next send meanwhile.
        """
        pending = batch
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableSinkError),
            wait=self._wait,
            stop=self._stop,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        await self._attempt(pending, on_accepted)
                    except (_PartialRetry, _PartialHeld) as partial:
                        pending = partial.remaining
                        raise
        except RetryableSinkError as exc:
            self._failed(exc)  # the last attempt is not followed by a sleep: noted here
            reason = f"gave up after {retrying.statistics.get('attempt_number', 1)} attempts: {exc}"
            await self._reject([(group, index, reason) for group, index in pending.records()])

    async def _attempt(self, batch: Batch, on_accepted: Callable[[], None] | None = None) -> None:
        """Send once; tally final outcomes; raise to retry what is left."""
        result = await self._sink.send(batch)
        self._check_count(result, batch)
        if result.acknowledged is not None:
            if on_accepted is not None:
                on_accepted()
            result = await result.acknowledged
            self._check_count(result, batch)
        outcomes = result.outcomes
        if outcomes and outcomes[0] in FINAL_OUTCOMES and outcomes[0] is not Outcome.DEAD_LETTERED:
            # The common case, a whole batch delivered: count it without a step per record.
            first = outcomes[0]
            if outcomes.count(first) == len(outcomes):
                self.failing_since = None
                self._telemetry.inc(
                    "shipper_records_total", len(outcomes), output=self.output, outcome=first
                )
                return
        rejected: list[Rejected] = []
        retry = [False] * len(result.outcomes)
        tally: dict[Outcome, int] = {}
        for n, ((group, index), outcome) in enumerate(
            zip(batch.records(), result.outcomes, strict=True)
        ):
            if outcome is Outcome.DEAD_LETTERED:
                rejected.append((group, index, result.reasons.get(n, "rejected by the output")))
            elif outcome in FINAL_OUTCOMES:
                tally[outcome] = tally.get(outcome, 0) + 1
            else:
                retry[n] = True
        progressed = bool(rejected or tally)
        if progressed:
            # The destination answered and settled records: it works, even if some come back.
            self.failing_since = None
        if rejected:
            await self._reject(rejected)
        for outcome, count in tally.items():
            self._telemetry.inc("shipper_records_total", count, output=self.output, outcome=outcome)
        if any(retry):
            raise _partial(result, batch, batch.subset(retry), progressed=progressed)

    def _check_count(self, result: BatchResult, batch: Batch) -> None:
        if len(result.outcomes) != len(batch):
            raise RuntimeError(
                f"output {self.output} reported {len(result.outcomes)} outcomes "
                f"for {len(batch)} records"
            )

    async def _reject(self, rejected: list[Rejected]) -> None:
        await self._dead_letter(self.output, rejected)
        self._telemetry.inc(
            "shipper_records_total",
            len(rejected),
            output=self.output,
            outcome=Outcome.DEAD_LETTERED,
        )

    def _failed(self, exc: BaseException | None) -> None:
        """An attempt failed: the output is failing since now, unless it already was or the
        attempt still got some records to a final outcome."""
        if self.failing_since is None and not getattr(exc, "progressed", False):
            self.failing_since = time.monotonic()

    def _stop(self, state: RetryCallState) -> bool:
        """The attempt limit ends retrying, except for refusals only an operator can fix:
        dead-lettering those would move checkpoints past data the destination never took."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, HeldSinkError):
            return False
        return bool(self._limit(state))

    def _wait(self, state: RetryCallState) -> float:
        delay = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            delay = min(float(retry_after), MAX_RETRY_AFTER)
        return delay

    def _before_sleep(self, state: RetryCallState) -> None:
        self._telemetry.inc("shipper_retries_total", output=self.output)
        exc = state.outcome.exception() if state.outcome else None
        self._failed(exc)
        if isinstance(exc, HeldSinkError):
            # Said at every attempt, at error level: nothing ships until someone acts.
            self._telemetry.inc("shipper_output_held_total", output=self.output)
            log.error(
                "Output refuses the data; holding it (nothing is lost, checkpoints wait) until "
                "this is fixed.",
                extra={
                    "output": self.output,
                    "attempt": state.attempt_number,
                    "delay_s": round(state.upcoming_sleep, 3),
                    "error": str(exc),
                },
            )
            return
        # Some records refused for now (a busy cluster's per-item 429) is the destination
        # pushing back, not a failure: said at info, counted in shipper_retries_total.
        level = logging.INFO if isinstance(exc, _PartialRetry) else logging.WARNING
        log.log(
            level,
            "Output failed; retrying."
            if level == logging.WARNING
            else "Resending refused records.",
            extra={
                "output": self.output,
                "attempt": state.attempt_number,
                "delay_s": round(state.upcoming_sleep, 3),
                "error": str(exc),
            },
        )


def _partial(
    result: BatchResult, batch: Batch, remaining: Batch, *, progressed: bool
) -> _PartialHeld | _PartialRetry:
    """What to raise for the records of `batch` that came back to be sent again."""
    if result.held is not None:
        return _PartialHeld(result.held, remaining, progressed=progressed)
    return _PartialRetry(len(remaining), len(batch), remaining, progressed=progressed)


class _PartialHeld(HeldSinkError):
    """Records of a batch refused for a reason only an operator can fix; `remaining` is what
    the next attempt sends."""

    def __init__(self, reason: str, remaining: Batch, *, progressed: bool = False) -> None:
        super().__init__(reason)
        self.remaining = remaining
        self.progressed = progressed  # other records of the attempt reached a final outcome


class _PartialRetry(RetryableSinkError):
    """Some records of a batch came back RETRY; `remaining` is what the next attempt sends."""

    def __init__(
        self, count: int, total: int, remaining: Batch, *, progressed: bool = False
    ) -> None:
        super().__init__(f"{count} of {total} records to retry")
        self.remaining = remaining
        self.progressed = progressed  # other records of the attempt reached a final outcome
