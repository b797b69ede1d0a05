"""Rotation schemes: which names in a directory are one live log file's generations, oldest first.

A follower reads a live file and the files its rotation left beside it, strictly oldest first, so
lines keep their order and a line split across a rotation is joined. Each scheme knows one
writer's naming: Docker's json-file (`x.1`, `x.2.gz`; larger is older), the kubelet's for CRI
container logs (`0.log.20240101-120000[.gz]`; the timestamp orders them) and logrotate's or
Python logging's (`app.log.1`, `app.log-20240101.gz`, `app.log.2024-01-01`).

Every scheme shares one rule about compression: a writer gzips a rotated file into `<name>.gz`
and deletes `<name>` only once the gzip is complete, so while both exist the `.gz` is unfinished
and left out; the plain file is the generation. Only gzip is read (shipper.sources.logfile), so
other compressed suffixes (`.bz2`, `.xz`, `.zst`) are not generations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

_GZ = ".gz"


class Rotation(Protocol):
    """How one live file's rotated generations are named."""

    base: str  # the live file's name in its directory
    # Whether the writer may go on writing to a file after it was renamed away (until it
    # reopens its log: the kubelet asks the runtime after renaming; an app on logrotate's
    # signal). Docker closes a file before renaming it.
    writes_after_rename: bool

    def generations(self, names: Iterable[str]) -> list[tuple[int, str]]:
        """This file's generations among `names` (one directory listing), OLDEST FIRST, as
        (age, name). The live file has age 0 and older files larger ages; ages compare only
        within one call (a file's age grows with every rotation). A `.gz` is left out while the
        plain file of the same generation exists."""
        ...


# A generation's place in time: tuples compare oldest first (see each scheme for its parts).
_Order = tuple[int, int, str]


def _pick(found: dict[str, tuple[_Order, str]], name: str, compressed: bool, order: _Order) -> None:
    """Record `name` as the generation `order`, preferring a plain file to its gzip twin."""
    plain = name[: -len(_GZ)] if compressed else name
    if compressed and plain in found:
        return  # the gzip of a file still there: the compressor has not finished it
    found[plain] = (order, name)


# Docker numbers from 1 with no leading zeros: `.0` or `.01` would claim the age of the live file
# or of `.1`, and no Docker writes them.
_DOCKER_SUFFIX = re.compile(r"\.([1-9]\d*)(\.gz)?", re.ASCII)
# The kubelet's Go time layout "20060102-150405"; `.tmp` (a gzip being written) never matches.
_KUBELET_SUFFIX = re.compile(r"\.(\d{8}-\d{6})(\.gz)?", re.ASCII)


class _SuffixRotation:
    """What the schemes share: a generation is the live name plus a suffix the scheme reads."""

    __slots__ = ("base",)
    writes_after_rename = True

    def __init__(self, base: str) -> None:
        self.base = base

    def generations(self, names: Iterable[str]) -> list[tuple[int, str]]:
        base = self.base
        start = len(base)
        order_of = self._order
        live = False
        found: dict[str, tuple[_Order, str]] = {}
        for name in names:
            if name == base:
                live = True
            elif name.startswith(base):
                read = order_of(name, start)
                if read is not None:
                    _pick(found, name, read[1], read[0])
        return self._aged(found, live)

    def _order(self, name: str, start: int) -> tuple[_Order, bool] | None:
        """The place in time of `name` (whose suffix begins at `start`) and whether it is
        compressed; None if it is not a generation of this file."""
        raise NotImplementedError

    def _aged(self, found: dict[str, tuple[_Order, str]], live: bool) -> list[tuple[int, str]]:
        return _by_rank(found, live, self.base)


class DockerRotation(_SuffixRotation):
    """Docker json-file: `<base>`, `<base>.N`, `<base>.N.gz`; N counts rotations, larger is older.

    Ages are Docker's own N, so a file's age is the number in its name.
    """

    __slots__ = ()
    writes_after_rename = False

    def _order(self, name: str, start: int) -> tuple[_Order, bool] | None:
        match = _DOCKER_SUFFIX.fullmatch(name, start)
        return None if match is None else ((0, -int(match[1]), ""), match[2] is not None)

    def _aged(self, found: dict[str, tuple[_Order, str]], live: bool) -> list[tuple[int, str]]:
        ordered = [(-order[1], name) for order, name in sorted(found.values())]
        if live:
            ordered.append((0, self.base))
        return ordered


class KubeletRotation(_SuffixRotation):
    """The kubelet's rotation of a CRI container log (pkg/kubelet/logs/container_log_manager.go).

    The live file is `<restart>.log`. At each rotation the kubelet first gzips every rotated file
    not yet compressed (writing `<name>.tmp`, renaming it to `<name>.gz`, then deleting
    `<name>`), then renames the live file to `<restart>.log.<YYYYMMDD-HHMMSS>` (Go layout
    "20060102-150405", the kubelet's clock) and has the runtime reopen the live file. So the
    newest rotated file stays uncompressed until the next rotation, older ones are `.gz`, and a
    `.tmp` is a gzip being written: never a generation. The kubelet orders rotated files by
    name, so the timestamp text orders them here too.
    """

    __slots__ = ()

    def _order(self, name: str, start: int) -> tuple[_Order, bool] | None:
        match = _KUBELET_SUFFIX.fullmatch(name, start)
        return None if match is None else ((0, 0, match[1]), match[2] is not None)


# logrotate's and Python logging's rotated names, after the live file's name:
# - numbered: `.N` (logrotate, RotatingFileHandler; logrotate's `start 0` makes `.0`), at most
#   six digits so that a date written as `.20240101` is read as a date;
# - dated: a separator, a date (YYYYMMDD or YYYY-MM-DD) and optionally more digit groups for the
#   time: logrotate's dateext (`-%Y%m%d` by default, or e.g. `-%Y%m%d%H`, `-%Y%m%d-%s`) and
#   TimedRotatingFileHandler (`.%Y-%m-%d`, `.%Y-%m-%d_%H-%M-%S`, …).
# Each group after the date begins with a separator, so matching never backtracks.
_NUMBERED = re.compile(r"\.(0|[1-9]\d{0,5})(\.gz)?", re.ASCII)
_DATED = re.compile(
    r"[-._](\d{4}(-?)(?:0[1-9]|1[0-2])\2(?:0[1-9]|[12]\d|3[01])\d*(?:[-_]\d+)*)(\.gz)?", re.ASCII
)
_NOT_DIGITS = re.compile(r"\D", re.ASCII)


class LogrotateRotation(_SuffixRotation):
    """Files rotated by logrotate or Python's logging handlers, numbered or dated.

    Numbered files are ordered by number (larger is older), dated ones by their digits (later is
    newer). A directory normally holds one style; if both are there the configuration changed,
    and the files of the old style are left behind by the new one (logrotate only rotates and
    deletes names of its current style), so they are older: numbered files are taken as older
    than dated ones, since switching dateext on is the usual change. Names beside the live file
    that are neither (`app.log.bak`, `app.log.swp`, `app.log.1.tmp`) are not generations.
    """

    __slots__ = ()

    def _order(self, name: str, start: int) -> tuple[_Order, bool] | None:
        # A date first: `.20240101` also looks like a (huge) number.
        match = _DATED.fullmatch(name, start)
        if match is not None:
            # Digits only, so `-20240101` and `.2024-01-01` compare as the same day.
            return (1, 0, _NOT_DIGITS.sub("", match[1])), name.endswith(_GZ)
        match = _NUMBERED.fullmatch(name, start)
        return None if match is None else ((0, -int(match[1]), ""), name.endswith(_GZ))


def logrotate_live_name(name: str) -> str | None:
    """The live file `name` is a rotated generation of (`app.log.2.gz` -> `app.log`), or None.

    The longest such name wins: `app.log.1` is a generation of `app.log`, never of `app`.
    """
    for position in range(len(name) - 1, 0, -1):
        if name[position] in ".-_":
            base = name[:position]
            if any(age > 0 for age, _ in LogrotateRotation(base).generations([name])):
                return base
    return None


def _by_rank(found: dict[str, tuple[_Order, str]], live: bool, base: str) -> list[tuple[int, str]]:
    """Generations oldest first, aged by rank: the newest rotated file is 1."""
    # The plain name breaks ties between equal orders (two styles naming the same date).
    ordered = sorted((order, plain, name) for plain, (order, name) in found.items())
    count = len(ordered)
    result = [(count - position, name) for position, (_, _, name) in enumerate(ordered)]
    if live:
        result.append((0, base))
    return result
