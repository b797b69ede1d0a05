"""Multiline joining: the lines of one event (a stack trace) in one stream become one record.

A parser is a small state machine: in each state, one pre-compiled alternation classifies a line
(which alternative matched is `Match.lastindex`), and the class says whether the line starts a
record, continues the open one, continues it only if a later line confirms it (a blank line
inside a Python or Go trace), ends it, or is a record of its own. Parsers are immutable and
shared by every container that uses them; a `MultilineJoiner` holds one container's state.

Records stay columns of a RecordGroup (DESIGN.md §2): a record of one line in one group is just
its index, and only records of several lines, or records carried over from an earlier group, get
an object. A record left open at the end of a group keeps its bytes held (`RangeClaim.hold_from`
at its first line in each file it spans) until the group it is finally shipped in settles, and
those holds are let go together (shipper.pipeline.acks.join_holds): a restart reads every line
of a record that spans a rotation again, or none of them.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from shipper.config import MULTILINE_PRESETS, ContainerMatch, MultilineConfig, MultilineParserConfig
from shipper.model import Hold, LogFile, RangeClaim, RecordGroup
from shipper.pipeline.acks import join_holds
from shipper.processing.metadata import matches_globs

log = logging.getLogger(__name__)

FLAG_MULTILINE_SPLIT = "multiline_split"
FLAG_INVALID_JSON = "invalid_json"  # as docker_json flags a line that was not a json-file entry

# What a line does to its stream's open record. Numbered so that one comparison tells the
# kinds that join an open record (>= _CONTINUE) from those that never do.
_START = 0  # completes the open record and starts a new one
_SINGLE = 1  # completes the open record and is a record of its own
_CONTINUE = 2  # joins the open record (starts one if none is open)
_MAYBE = 3  # joins it only if a later line continues it; otherwise it is a record of its own
_END = 4  # joins it and completes it
# Kinds whose line, when it starts a record, leaves that record open for the next line.
_LEAVES_OPEN = frozenset({_START, _CONTINUE})

_V = TypeVar("_V")
_Action = tuple[int, int]  # (what the line does, the parser's next state)
_Matcher = Callable[[str], "re.Match[str] | None"]


@dataclass(frozen=True, slots=True, eq=False)
class MultilineParser:
    """A compiled multiline parser: immutable, shared by all the containers that use it.

    `rules[state]` are tried in order (presets have one combined alternation per state); the
    action of a match is `table[match.lastindex or 0]`; a line no rule matches takes
    `defaults[state]`. State 0 is where every stream starts and returns after a timeout.
    """

    name: str
    rules: tuple[tuple[tuple[_Matcher, tuple[_Action, ...]], ...], ...]
    defaults: tuple[_Action, ...]


def _preset(
    name: str, states: dict[str, tuple[list[tuple[str, int, str]], tuple[int, str]]]
) -> MultilineParser:
    """A parser from named states, each a list of (pattern, action, next state) and a default.

    Each state's patterns are compiled into one alternation of capturing groups, so one
    `match` call classifies a line and `lastindex` says which alternative it was: the patterns
    themselves must not capture.
    """
    number = {state: index for index, state in enumerate(states)}
    rules = []
    defaults = []
    for state, (alternatives, (kind, after)) in states.items():
        pattern = re.compile("|".join(f"({source})" for source, _, _ in alternatives))
        if pattern.groups != len(alternatives):
            raise ValueError(f"{name}.{state}: a pattern has a capturing group of its own")
        default = (kind, number[after])
        table = (default, *((action, number[target]) for _, action, target in alternatives))
        rules.append(((pattern.match, table),))
        defaults.append(default)
    return MultilineParser(name, tuple(rules), tuple(defaults))


_BLANK = r"[ \t]*$"

# Java (and the JVM languages, whose traces Throwable.printStackTrace writes the same way).
# The header is a class name ending in Exception, Error or Throwable, then ": message" or the
# end of the line. A header of another shape (`org.foo.Failure: x`) is still caught: the frame
# lines after it join whatever line came before them.
_J_THREAD = r'Exception in thread "'
_J_HEADER = r"(?:[A-Za-z_$][\w$]*\.)+[\w$]*(?:Exception|Error|Throwable)(?::|$)"
_J_FRAME = r"[ \t]+at [^ \t]|[ \t]*\.\.\. \d+ (?:more|common frames omitted)"
_J_CAUSE = r"[ \t]*(?:Caused by|Suppressed|Wrapped by): "

# The line just before a bare header joins the trace. Logging frameworks (logback, log4j2,
# java.util.logging, Python's logging) write the log line and the trace in one write, and
# operators search for the trace by the log line's message, so they belong in one record (Spring
# Boot's error log even puts a blank line between them: blank lines there join tentatively). The
# cost: an unrelated line written just before a printStackTrace() trace is joined too (nothing
# is lost, only grouped). A stale line cannot be joined: it ships after the flush timeout. The
# JVM's own `Exception in thread "main"` header has no log line before it, so it starts a record.
# Inside a trace, indented lines continue it: besides frames, exception messages of several
# lines are indented that way (PostgreSQL's `  Detail: ...`). A message line that is not
# indented ends the record (the frames after it form the next one: nothing is lost).
JAVA = _preset(
    "java",
    {
        "plain": (
            [
                (_J_THREAD, _START, "trace"),
                (_J_HEADER, _CONTINUE, "trace"),
                (_J_FRAME, _CONTINUE, "trace"),
                (_J_CAUSE, _CONTINUE, "trace"),
                (_BLANK, _MAYBE, "blank"),
            ],
            (_START, "plain"),
        ),
        "blank": (  # a log line, then blank lines: they join it only if a header follows
            [
                (_J_HEADER, _CONTINUE, "trace"),
                (_BLANK, _MAYBE, "blank"),
                (_J_THREAD, _START, "trace"),
                (_J_FRAME, _START, "trace"),
                (_J_CAUSE, _START, "trace"),
            ],
            (_START, "plain"),
        ),
        "trace": (
            [
                (_BLANK, _SINGLE, "plain"),  # a trace has no blank line: it ended
                (_J_FRAME, _CONTINUE, "trace"),
                (_J_CAUSE, _CONTINUE, "trace"),
                (r"[ \t]", _CONTINUE, "trace"),
                (_J_THREAD, _START, "trace"),
                (_J_HEADER, _START, "trace"),  # a second trace right after the first
            ],
            (_START, "plain"),
        ),
    },
)

# Python: no `$` after the fixed phrases, so a line with a suffix (trailing spaces, a CR, an
# appended request id) is still recognised.
_P_TRACEBACK = r"Traceback \(most recent call last\):"
_P_GROUP = r"[ \t]*\+ Exception Group Traceback \(most recent call last\):"
_P_CHAINED = (
    r"During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:"
)
# The exception line that ends a traceback: `ValueError: boom`, `KeyboardInterrupt`,
# `json.decoder.JSONDecodeError: Expecting value: ...`.
_P_EXCEPTION = r"[A-Za-z_][\w.]*(?::(?: .*)?)?$"

PYTHON = _preset(
    "python",
    {
        "plain": (
            [
                # logging.exception() writes "message\nTraceback ...": the message joins.
                (_P_TRACEBACK, _CONTINUE, "frames"),
                (_P_GROUP, _CONTINUE, "frames"),
                (_BLANK, _SINGLE, "plain"),  # joins nothing, and no traceback joins it
            ],
            (_START, "plain"),
        ),
        "frames": (  # File/code/caret lines, and every `|`/`+-` line of an exception group
            [
                (_BLANK, _MAYBE, "between"),  # after an exception group's last line
                (r"[ \t]", _CONTINUE, "frames"),
                (_P_TRACEBACK, _START, "frames"),
                (_P_EXCEPTION, _CONTINUE, "exception"),
            ],
            (_START, "plain"),
        ),
        "exception": (
            [
                (_BLANK, _MAYBE, "between"),
                (_P_TRACEBACK, _START, "frames"),
                (_P_GROUP, _START, "frames"),
            ],
            (_START, "plain"),
        ),
        # A blank line after a traceback belongs to it only if a chained one follows.
        "between": (
            [
                (_P_CHAINED, _CONTINUE, "chained"),
                (_BLANK, _MAYBE, "between"),
                (_P_TRACEBACK, _START, "frames"),
                (_P_GROUP, _START, "frames"),
            ],
            (_START, "plain"),
        ),
        "chained": (
            [
                (_BLANK, _CONTINUE, "chained"),
                (_P_TRACEBACK, _CONTINUE, "frames"),
                (_P_GROUP, _CONTINUE, "frames"),
            ],
            (_START, "plain"),
        ),
    },
)

# Go: the runtime prints a panic or fatal error, a blank line, then every goroutine (a header,
# then function lines each followed by an indented file:line line), goroutines separated by
# blank lines; `go run` adds `exit status 2`. A panic is printed by the runtime itself, never
# right after a log line of the same event, so it always starts a record. net/http logs
# "http: panic serving ADDR: msg" and the goroutine without a blank line between.
_G_PANIC = (
    r"panic: |fatal error: |SIG[A-Z]+: "
    r"|(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)? )?http: panic serving "
)
_G_GOROUTINE = r"goroutine \d+ [^\[]*\[[^\]]*\]:"
_G_DETAIL = r"[ \t]+panic: |\[signal |PC=0x"  # nested panics, the fault, a signal's registers
_G_FRAME = r"[ \t]|[^\s(]+\(.*\)\s*$|created by |\.\.\.additional frames elided\.\.\."
_G_EXIT = r"exit status \d+"

GO = _preset(
    "go",
    {
        "plain": ([(_G_PANIC, _START, "panic")], (_START, "plain")),
        "panic": (
            [
                (_G_DETAIL, _CONTINUE, "panic"),
                (_G_GOROUTINE, _CONTINUE, "frames"),
                (_BLANK, _MAYBE, "between"),
                (_G_PANIC, _START, "panic"),
            ],
            (_START, "plain"),
        ),
        "frames": (
            [
                (_BLANK, _MAYBE, "between"),
                (_G_FRAME, _CONTINUE, "frames"),
                (_G_GOROUTINE, _CONTINUE, "frames"),
                (_G_EXIT, _END, "plain"),
                (_G_PANIC, _START, "panic"),
            ],
            (_START, "plain"),
        ),
        # A blank line belongs to the dump only if another goroutine (or the runtime's own
        # stack, with GOTRACEBACK=system) follows.
        "between": (
            [
                (_G_GOROUTINE, _CONTINUE, "frames"),
                (r"runtime stack:", _CONTINUE, "frames"),
                (_BLANK, _MAYBE, "between"),
                (_G_EXIT, _END, "plain"),
                (_G_PANIC, _START, "panic"),
            ],
            (_START, "plain"),
        ),
    },
)

PRESETS: dict[str, MultilineParser] = {"java": JAVA, "python": PYTHON, "go": GO}
if tuple(PRESETS) != MULTILINE_PRESETS:  # the config validates names against that list
    raise RuntimeError("the multiline presets and config.MULTILINE_PRESETS differ")


def custom_parser(name: str, config: MultilineParserConfig) -> MultilineParser:
    """A parser from an operator's `start` and/or `continue` patterns.

    The patterns are searched (not anchored: `^` anchors them) and tried separately, `start`
    first: they are the operator's own and may have groups, flags or backreferences that an
    alternation would break. Every group index maps to the same action.
    """
    start, more = config.start, config.continue_
    rules: list[tuple[_Matcher, tuple[_Action, ...]]] = []
    if start is not None:
        rules.append((start.search, ((_START, 0),) * (start.groups + 1)))
    if more is not None:
        rules.append((more.search, ((_CONTINUE, 0),) * (more.groups + 1)))
    if start is None:
        default = (_START, 0)
    elif more is None:
        default = (_CONTINUE, 0)
    else:
        default = (_SINGLE, 0)
    return MultilineParser(name, (tuple(rules),), (default,))


def build_parsers(config: MultilineConfig) -> dict[str, MultilineParser]:
    """Every parser a container may use: the presets and the configured ones, by name."""
    parsers = dict(PRESETS)
    for name, parser in config.parsers.items():
        parsers[name] = custom_parser(name, parser)
    return parsers


# -- choosing a container's parser ---------------------------------------------------------------

_WARNED: dict[tuple[str, str], None] = {}  # (container, label value) already warned about
_WARNED_MAX = 4096


def choose_parser(
    config: MultilineConfig,
    parsers: Mapping[str, MultilineParser],
    *,
    name: str,
    image: str,
    labels: Mapping[str, str],
) -> MultilineParser | None:
    """The parser of one container: the first matching rule's, else the one its label names,
    else the default; None for "none".

    The label may only name a parser that exists (a preset, a configured one) or "none":
    whoever can start a container must not be able to make shipper compile a regular
    expression (a catastrophic-backtracking pattern would stall every container's logs).
    """
    name = name.lstrip("/")
    for rule in config.rules:
        if matches(rule.match, name=name, image=image, labels=labels):
            return parsers.get(rule.parser)  # "none" is no parser
    if config.label:
        value = labels.get(config.label)
        if value is not None:
            chosen = value.strip()
            if chosen == "none":
                return None
            parser = parsers.get(chosen)
            if parser is not None:
                return parser
            _warn_unknown(name, config.label, value)
    return parsers.get(config.default)


def matches(match: ContainerMatch, *, name: str, image: str, labels: Mapping[str, str]) -> bool:
    """Whether a container matches any glob of `match`, as a source's include/exclude does."""
    patterns = (tuple(match.names), tuple(match.images), tuple(match.labels))
    return matches_globs(patterns, name, image, labels)


def _warn_unknown(name: str, label: str, value: str) -> None:
    # Once per container and value: a follower asks again for each new file of the container.
    key = (name, value)
    if key in _WARNED:
        return
    if len(_WARNED) >= _WARNED_MAX:
        del _WARNED[next(iter(_WARNED))]
    _WARNED[key] = None
    log.warning(
        "Multiline label ignored: it names no parser (only presets, configured parsers or "
        "none); the default parser is used.",
        extra={"container": name, "label": label, "value": value[:80]},
    )


# -- joining -------------------------------------------------------------------------------------


class _Pending:
    """A record carried from one group to the next (or a tentative line of one), as text."""

    __slots__ = (
        "attrs",
        "end",
        "file",
        "first_hold",
        "flags",
        "held_in",
        "holds",
        "lines",
        "offset",
        "parts",
        "seq",
        "size",
        "stream",
        "tentative",
        "timestamp",
    )

    def __init__(self, group: RecordGroup, index: int, seq: int) -> None:
        self.file: LogFile = group.heads.get(index, group.file) if group.heads else group.file
        self.offset = group.offsets[index]
        self.end = group.ends[index]  # of its last line: updated as lines join it
        self.timestamp = group.timestamps[index]
        self.stream = group.streams[index]
        self.attrs = group.attrs.get(index) if group.attrs else None
        self.flags: list[str] = list(group.flags.get(index, ())) if group.flags else []
        self.parts = [group.messages[index]]
        self.lines = 1
        self.size = _utf8_size(group.messages[index])
        self.seq = seq  # position of the first line in arrival order: orders the records
        self.holds: list[Hold] = []
        self.held_in = ""  # handle of the file the last of `holds` is in
        self.first_hold: Hold | None = None  # the hold in `file`, from the record's start
        # Trailing lines that belong to the record only if a later line continues it.
        self.tentative: list[_Pending] = []


class _Record:
    """A record of several lines, or one carried from an earlier group, while a group is
    joined: `head` is the carried part, `first` and `more` index this group's lines."""

    __slots__ = ("first", "head", "more")

    def __init__(self, head: _Pending | None, first: int, more: list[int]) -> None:
        self.head = head
        self.first = first  # -1 when the record started in an earlier group
        self.more = more


class _Stream:
    """The parser state and the open record of one stream."""

    __slots__ = ("head", "last", "lines", "size", "slot", "split_next", "state", "tentative")

    def __init__(self) -> None:
        self.state = 0
        self.head: _Pending | None = None  # the open record, between groups
        self.last = 0.0  # when its last line arrived (monotonic)
        self.slot = -1  # while a group is joined: the open record's place in the output order
        self.lines = 0
        self.size = -1  # UTF-8 bytes of the joined message; -1: not measured yet
        self.tentative: list[int] = []  # output places reserved for tentative lines
        self.split_next = False  # the record was cut at a limit: its continuation is flagged


class _SharedHold:
    """An input group's holds, carried by several open records: released with the last."""

    __slots__ = ("_holds", "_owners")

    def __init__(self, holds: list[Hold], owners: int) -> None:
        self._holds = holds
        self._owners = owners

    def release(self) -> None:
        self._owners -= 1
        if self._owners == 0:
            for hold in self._holds:
                hold.release()


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _union(flags: list[str], more: tuple[str, ...]) -> None:
    for flag in more:
        if flag not in flags:
            flags.append(flag)


class MultilineJoiner:
    """One per followed container (or file): the open record and parser state of each stream.

    A record reaching `max_lines` lines ships at once, and a line that would make its message
    longer than `max_bytes` (UTF-8) starts a new record; both records are flagged
    `multiline_split`. No line is ever dropped.
    """

    def __init__(self, parser: MultilineParser, *, max_lines: int, max_bytes: int) -> None:
        self.parser = parser
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._streams: dict[str, _Stream] = {}
        self._serial = 0  # counts groups: with a line's index, orders lines across groups

    @property
    def pending(self) -> bool:
        return any(stream.head is not None for stream in self._streams.values())

    def oldest(self) -> float | None:
        """When the last line of the longest-waiting open record arrived."""
        return min(
            (stream.last for stream in self._streams.values() if stream.head is not None),
            default=None,
        )

    # The per-line loop stays in one function on purpose: a call per line costs throughput.
    def apply(  # noqa: PLR0912, PLR0915
        self, group: RecordGroup, claim: RangeClaim | None, now: float
    ) -> RecordGroup:
        """The records of `group` joined; records left open wait here, their bytes held from
        `claim` (None: take no holds); `now` (monotonic) starts their flush timeout."""
        messages = group.messages
        streams = group.streams
        flags = group.flags
        if len(group.ends) != len(messages):
            group.ends = [-1] * len(messages)  # built by hand without ends: not known
        self._serial += 1
        # The output, in order of each record's first line: an index (a record of one line of
        # this group), a _Record, or None (a place whose line went into another record).
        order: list[int | _Record | None] = []
        split: set[int] = set()  # places of records flagged multiline_split
        by_stream = self._streams
        self._place_carried(order)
        carried = len(order)  # places of records (and their lines) from earlier groups
        joined = False  # whether a line of this group joined a record
        rules = self.parser.rules
        defaults = self.parser.defaults
        max_lines = self.max_lines
        max_bytes = self.max_bytes
        for index, message in enumerate(messages):
            if flags and index in flags and FLAG_INVALID_JSON in flags[index]:
                order.append(index)  # not the application's output: never joined
                continue
            stream = by_stream.get(streams[index])
            if stream is None:
                stream = by_stream[streams[index]] = _Stream()
            for match, table in rules[stream.state]:
                found = match(message)
                if found is not None:
                    kind, stream.state = table[found.lastindex or 0]
                    break
            else:
                kind, stream.state = defaults[stream.state]
            slot = stream.slot
            if slot >= 0 and kind >= _CONTINUE:
                # The line joins the open record.
                joined = True
                if stream.tentative and kind != _MAYBE:
                    self._confirm(stream, order)
                size = stream.size
                if size < 0:  # a record of one line so far: its index is its place
                    size = _utf8_size(messages[order[slot]])  # type: ignore[index]
                line_size = _utf8_size(message)
                size += 1 + line_size
                if size > max_bytes:
                    # Too long to join: the event goes on in a record of its own.
                    if stream.tentative:
                        self._confirm(stream, order)
                    split.add(slot)
                    slot = len(order)
                    order.append(index)
                    split.add(slot)
                    stream.slot = -1 if kind == _END else slot
                    stream.lines = 1
                    stream.size = line_size
                    continue
                record = order[slot]
                if type(record) is int:
                    order[slot] = _Record(None, record, [index])
                else:
                    record.more.append(index)  # type: ignore[union-attr]
                if kind == _MAYBE:
                    stream.tentative.append(len(order))
                    order.append(None)
                stream.size = size
                stream.lines += 1
                if stream.lines >= max_lines:
                    if stream.tentative:
                        self._confirm(stream, order)
                    split.add(slot)
                    stream.slot = -1
                    stream.split_next = kind != _END
                elif kind == _END:
                    stream.slot = -1
                continue
            # The line starts a record.
            if slot >= 0 and stream.tentative:
                self._split_off(stream, order)
            slot = stream.slot = len(order)
            order.append(index)
            stream.lines = 1
            stream.size = -1
            if stream.split_next:
                if kind >= _CONTINUE:
                    split.add(slot)  # the rest of an event cut at a limit
                stream.split_next = False
            if kind not in _LEAVES_OPEN:
                # Of its own, ending, or tentative with no record to join: complete at once.
                stream.slot = -1
        waiting, taken = self._carry_open(group, order, split, claim, now)
        if joined or split:
            return self._output(group, order, split, waiting, claim)
        # No line joined another: this group's lines are its records but those left open.
        return self._output_lines(
            group,
            order[:carried],
            [place - carried for place in taken if place >= carried],
            waiting,
        )

    def expired(self, now: float, timeout: float) -> RecordGroup | None:
        """The open records whose last line arrived `timeout` seconds ago or earlier."""
        due = [
            stream
            for stream in self._streams.values()
            if stream.head is not None and now - stream.last >= timeout
        ]
        return self._flush(due) if due else None

    def take_all(self) -> RecordGroup | None:
        """Every open record (the container stopped, or shipper stops)."""
        due = [stream for stream in self._streams.values() if stream.head is not None]
        return self._flush(due) if due else None

    # -- helpers: each runs once per record or group, not per line ------------------------------

    def _place_carried(self, order: list[int | _Record | None]) -> None:
        """Put the records carried from earlier groups first in the output order (they began
        before any line of this group), with a place for each of their tentative lines."""
        places: list[tuple[int, _Stream, _Pending, bool]] = []  # (seq, stream, what, tentative)
        for stream in self._streams.values():
            head = stream.head
            if head is not None:
                places.append((head.seq, stream, head, False))
                places.extend((line.seq, stream, line, True) for line in head.tentative)
                stream.head = None  # in `order` now; _carry_open puts it back if still open
        if not places:
            return
        places.sort(key=lambda place: place[0])
        for _, stream, pending, tentative in places:
            if tentative:
                stream.tentative.append(len(order))
                order.append(None)
            else:
                stream.slot = len(order)
                stream.lines = pending.lines
                stream.size = pending.size
                order.append(_Record(pending, -1, []))

    @staticmethod
    def _confirm(stream: _Stream, order: list[int | _Record | None]) -> None:
        """A line continued the record: its tentative lines are part of it."""
        stream.tentative.clear()  # their places stay empty
        record = order[stream.slot]
        if isinstance(record, _Record) and record.head is not None and record.head.tentative:
            head = record.head
            for line in head.tentative:
                head.parts.extend(line.parts)
                _union(head.flags, tuple(line.flags))
            head.end = head.tentative[-1].end
            head.tentative = []

    @staticmethod
    def _split_off(stream: _Stream, order: list[int | _Record | None]) -> None:
        """The record ended before its tentative lines: each is a record of its own, in the
        place reserved for it."""
        record = order[stream.slot]
        assert isinstance(record, _Record)  # noqa: S101 - only a joined record has tentative lines
        carried = record.head.tentative if record.head is not None else []
        here = len(stream.tentative) - len(carried)
        lines: list[int | _Record] = [_Record(line, -1, []) for line in carried]
        if here:
            lines.extend(record.more[-here:])
            del record.more[-here:]
        for place, line in zip(stream.tentative, lines, strict=True):
            order[place] = line
        if record.head is not None:
            record.head.tentative = []
        stream.tentative.clear()

    def _carry_open(
        self,
        group: RecordGroup,
        order: list[int | _Record | None],
        split: set[int],
        claim: RangeClaim | None,
        now: float,
    ) -> tuple[list[_Pending], list[int]]:
        """Take the records still open out of the output and keep them, held from their first
        line in this group's file. Returns the ones with lines in this group, and the places
        they were taken from."""
        waiting: list[_Pending] = []
        taken: list[int] = []
        base = self._serial << 32
        for stream in self._streams.values():
            slot = stream.slot
            if slot < 0:
                continue
            record = order[slot]
            order[slot] = None
            taken.append(slot)
            stream.slot = -1
            tentative = len(stream.tentative)  # this group's tentative lines, and carried ones
            stream.tentative.clear()
            first: int | None
            if record is None:
                continue  # never: an open record has its place
            if isinstance(record, int):  # a record of one line: its index is its place
                first = record
                head = _Pending(group, first, base | first)
                here: list[int] = []
            elif record.head is None:
                first = record.first
                head = _Pending(group, first, base | first)
                here = record.more
            else:
                head = record.head
                here = record.more
                first = here[0] if here else None
                tentative -= len(head.tentative)
            confirmed = len(here) - tentative
            for line in here[:confirmed]:
                head.parts.append(group.messages[line])
                if group.flags and line in group.flags:
                    _union(head.flags, group.flags[line])
            if confirmed > 0:
                head.end = group.ends[here[confirmed - 1]]
            head.tentative.extend(_Pending(group, line, base | line) for line in here[confirmed:])
            if slot in split and FLAG_MULTILINE_SPLIT not in head.flags:
                head.flags.append(FLAG_MULTILINE_SPLIT)
            head.lines = stream.lines
            head.size = stream.size if stream.size >= 0 else head.size
            stream.head = head
            if first is None:
                continue  # no new line: waits as it was
            stream.last = now
            waiting.append(head)
            if claim is not None and head.held_in != group.file.handle:
                _hold(head, group, claim, first, into=head.holds)
        return waiting, taken

    def _output(
        self,
        group: RecordGroup,
        order: list[int | _Record | None],
        split: set[int],
        waiting: list[_Pending],
        claim: RangeClaim | None,
    ) -> RecordGroup:
        """The group of the records completed in `group`, in order of their first line."""
        out = RecordGroup(
            file=group.file,
            start=group.start,
            end=group.end,
            enrichment=group.enrichment,
            invalid_json=group.invalid_json,
            invalid_time=group.invalid_time,
        )
        if group.held:
            _pass_on(group.held, out, waiting)
        messages, streams, timestamps, offsets, ends = (
            group.messages,
            group.streams,
            group.timestamps,
            group.offsets,
            group.ends,
        )
        flags, attrs, heads = group.flags, group.attrs, group.heads
        out_messages, out_streams, out_timestamps, out_offsets, out_ends = (
            out.messages,
            out.streams,
            out.timestamps,
            out.offsets,
            out.ends,
        )
        out_flags = out.flags
        for place, record in enumerate(order):
            if record is None:
                continue
            if not isinstance(record, int):
                _append_joined(out, group, record, split=place in split, claim=claim)
                continue
            index = len(out_messages)
            out_messages.append(messages[record])
            out_streams.append(streams[record])
            out_timestamps.append(timestamps[record])
            out_offsets.append(offsets[record])
            out_ends.append(ends[record])
            if flags and record in flags:
                out_flags[index] = flags[record]
            if attrs and record in attrs:
                out.attrs[index] = attrs[record]
            if heads and record in heads:
                out.heads[index] = heads[record]
            if split and place in split:
                out_flags[index] = (*out_flags.get(index, ()), FLAG_MULTILINE_SPLIT)
        return out

    @staticmethod
    def _output_lines(
        group: RecordGroup,
        carried: list[int | _Record | None],
        open_lines: list[int],
        waiting: list[_Pending],
    ) -> RecordGroup:
        """The output when no line of `group` joined a record (most groups): the records
        completed from earlier groups, then this group's lines but the `open_lines`, copied a
        slice at a time rather than a record at a time."""
        out = RecordGroup(
            file=group.file,
            start=group.start,
            end=group.end,
            enrichment=group.enrichment,
            invalid_json=group.invalid_json,
            invalid_time=group.invalid_time,
        )
        if group.held:
            _pass_on(group.held, out, waiting)
        for record in carried:
            if record is not None:
                assert not isinstance(record, int)  # noqa: S101 - carried records are objects
                _append_joined(out, group, record, split=False)
        shift = len(out.messages)
        open_lines.sort()
        cuts = [-1, *open_lines, len(group.messages)]
        _copy(group.messages, out.messages, cuts)
        _copy(group.streams, out.streams, cuts)
        _copy(group.timestamps, out.timestamps, cuts)
        _copy(group.offsets, out.offsets, cuts)
        _copy(group.ends, out.ends, cuts)
        _move(group.flags, out.flags, open_lines, shift)
        _move(group.attrs, out.attrs, open_lines, shift)
        _move(group.heads, out.heads, open_lines, shift)
        return out

    def _flush(self, due: list[_Stream]) -> RecordGroup:
        """A group of the given streams' open records, built as partials.group_of builds one:
        it owns no bytes (start = end = 0) and releases the ranges the records held."""
        records: list[_Pending] = []
        for stream in due:
            head = stream.head
            assert head is not None  # noqa: S101
            records.append(head)
            records.extend(head.tentative)  # nothing continued them: records of their own
            head.tentative = []
            stream.head = None
            stream.state = 0
            stream.split_next = False
        records.sort(key=lambda record: record.seq)
        group = RecordGroup(file=records[0].file, start=0, end=0)
        for index, record in enumerate(records):
            group.messages.append("\n".join(record.parts))
            group.streams.append(record.stream)
            group.timestamps.append(record.timestamp)
            group.offsets.append(record.offset)
            group.ends.append(record.end)
            if record.flags:
                group.flags[index] = tuple(record.flags)
            if record.attrs is not None:
                group.attrs[index] = record.attrs
            if record.file != group.file:
                group.heads[index] = record.file
            group.held.extend(record.holds)
        return group


def _pass_on(held: list[Hold], out: RecordGroup, waiting: list[_Pending]) -> None:
    """Where the input group's holds go: with the output group, or, if a record with lines in
    it is still open, with that record (those holds keep the first parts of lines rejoined in
    this group, which may be in it: no checkpoint may pass them before it ships)."""
    if not waiting:
        out.held.extend(held)
    elif len(waiting) == 1:
        waiting[0].holds.extend(held)
    else:
        shared = _SharedHold(list(held), len(waiting))
        for pending in waiting:
            pending.holds.append(shared)


def _append_joined(
    out: RecordGroup,
    group: RecordGroup,
    record: _Record,
    *,
    split: bool,
    claim: RangeClaim | None = None,
) -> None:
    """Append a record of several lines (or one carried from an earlier group) to `out`: the
    lines joined with newlines; time, offset, attrs and file of the first; the end of the last;
    every line's flags. A carried record that ends in a later file than the one it began in
    holds this group's range (`claim`) from its first line here, as an open one would (_hold)."""
    index = len(out.messages)
    messages, flags = group.messages, group.flags
    more = record.more
    joined: list[str] = []
    head = record.head
    if head is None:
        first = record.first
        out.messages.append("\n".join([messages[first], *[messages[line] for line in more]]))
        out.streams.append(group.streams[first])
        out.timestamps.append(group.timestamps[first])
        out.offsets.append(group.offsets[first])
        out.ends.append(group.ends[more[-1] if more else first])
        if group.attrs and first in group.attrs:
            out.attrs[index] = group.attrs[first]
        if group.heads and first in group.heads:
            out.heads[index] = group.heads[first]
        more = [first, *more]
    else:
        out.messages.append("\n".join([*head.parts, *[messages[line] for line in more]]))
        out.streams.append(head.stream)
        out.timestamps.append(head.timestamp)
        out.offsets.append(head.offset)
        out.ends.append(group.ends[more[-1]] if more else head.end)
        if head.attrs is not None:
            out.attrs[index] = head.attrs
        if head.file != out.file:
            out.heads[index] = head.file
        joined.extend(head.flags)
        out.held.extend(head.holds)
        if (
            claim is not None
            and more
            and head.first_hold is not None
            and head.held_in != group.file.handle
        ):
            _hold(head, group, claim, more[0], into=out.held)
    if flags:
        for line in more:
            if line in flags:
                _union(joined, flags[line])
    if split and FLAG_MULTILINE_SPLIT not in joined:
        joined.append(FLAG_MULTILINE_SPLIT)
    if joined:
        out.flags[index] = tuple(joined)


def _hold(
    record: _Pending, group: RecordGroup, claim: RangeClaim, first: int, *, into: list[Hold]
) -> None:
    """Keep `group`'s range held from the record's first line in it: the hold goes `into` the
    record's holds (it stays open) or its output group's (it ships in that group).

    One hold per file suffices: a file's checkpoint moves in order, so holding from the
    record's first line in it keeps every later line of it unsettled too. A line rejoined from
    parts that began in an earlier chunk or file holds from this chunk's start; its earlier
    parts stay held by the holds the group came with (see _pass_on).

    In a later file than the record's first, the hold is joined with the one there
    (join_holds): else a restart could read the record's first lines again but not its later
    ones, and ship a truncated second copy, or its later ones but not its first, and ship them
    again as a record of their own.
    """
    offset = group.offsets[first]
    if offset < group.start or (group.heads and first in group.heads):
        offset = group.start
    if offset >= group.end:
        return
    hold = claim.hold_from(offset)
    if record.first_hold is None:
        if group.file.handle == record.file.handle:
            record.first_hold = hold
    else:
        hold = join_holds(hold, record.first_hold)
    into.append(hold)
    record.held_in = group.file.handle


def _move(sparse: dict[int, _V], target: dict[int, _V], gone: list[int], shift: int) -> None:
    """Copy a sparse column to the output, whose records are the input's lines but the sorted
    `gone` ones, after `shift` others."""
    for index, value in sparse.items():
        if index not in gone:
            target[index + shift - bisect.bisect(gone, index)] = value


def _copy(source: list[_V], target: list[_V], cuts: list[int]) -> None:
    """Copy a column to the output but the lines at `cuts` (bounded by -1 and the length)."""
    if len(cuts) == 2:
        target.extend(source)
        return
    for before, after in itertools.pairwise(cuts):
        target.extend(source[before + 1 : after])
