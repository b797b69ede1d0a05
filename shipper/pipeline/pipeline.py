"""Pipeline: takes each chunk a source read, decodes it once and routes it to its outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shipper.model import Chunk, Hold, RangeClaim, RecordGroup, Settlement
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.budget import ByteBudget
from shipper.pipeline.output import OutputRunner
from shipper.telemetry.counters import Telemetry

# Decodes a chunk; the RangeClaim is the chunk's own byte range, for records left waiting (a
# partial line, a multiline record) to keep held from their first line beyond this group.
Decoder = Callable[[Chunk, RangeClaim], RecordGroup]


class Pipeline:
    """The join between sources and outputs, and the keeper of the ack invariant.

    For every chunk, in file order: reserve its bytes in the budget, register its byte range
    with the AckTracker, decode it, and hand the group to every output that takes its source.
    The range is released (and the checkpoint may move) only when every one of those outputs
    has settled the group; a group no output takes settles at once.
    """

    def __init__(
        self, outputs: Sequence[OutputRunner], budget: ByteBudget, telemetry: Telemetry
    ) -> None:
        self.outputs = list(outputs)
        self.tracker = AckTracker()
        self.budget = budget
        self._telemetry = telemetry

    async def ingest(self, chunk: Chunk, decode: Decoder, *, reserved: int = 0) -> None:
        """Decode and route `chunk`; `reserved`: budget bytes its reader acquired before
        reading (under this key), which count toward the chunk's size."""
        size = len(chunk.data)
        key = (chunk.file.source, chunk.file.container_id)
        if size > reserved:
            try:
                await self.budget.acquire(size - reserved, key)
            except BaseException:
                self.budget.release(reserved, key)
                raise
        elif reserved > size:
            self.budget.release(reserved - size, key)
        ticket = self.tracker.register(chunk.file.handle, chunk.end)
        group = decode(chunk, ticket)
        source = chunk.file.source
        telemetry = self._telemetry
        lines = len(group) if group.lines_read is None else group.lines_read
        telemetry.inc("shipper_lines_read_total", lines, source=source)
        telemetry.inc("shipper_bytes_read_total", size, source=source)
        if group.invalid_json:
            telemetry.inc("shipper_invalid_lines_total", group.invalid_json, source=source)
        if group.invalid_time:
            telemetry.inc("shipper_invalid_timestamps_total", group.invalid_time, source=source)
        self.route(group, [ticket, *group.held], size)

    def route(self, group: RecordGroup, holds: list[Hold], size: int) -> None:
        """Send `group` to its outputs; `holds` and `size` are released when all settle."""
        budget = self.budget

        def settled() -> None:
            for hold in holds:
                hold.release()
            budget.release(size, (group.file.source, group.file.container_id))

        group.settlement = Settlement(settled)
        targets = [output for output in self.outputs if output.accepts(group.file.source)]
        if not group:
            targets = []  # nothing to send (blank lines only): the range settles now
        for output in targets:
            output.put(group)
        group.settlement.expect(len(targets))
