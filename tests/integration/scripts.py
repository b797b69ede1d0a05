"""Builders of busybox `sh -c` scripts that make a container log what a test needs, fast.

Each builder returns a fragment of POSIX sh for busybox ash; join fragments with `chain`.
They use only shell builtins inside loops (`printf`, `echo`, `[`, arithmetic): a `$(…)` per
line forks a subshell and is ten times slower (20,000 lines: ~5 s instead of ~0.4 s).

Every numbered line carries `seq=NNNNNN` (6+ digits), the same marker as
`shipper.docker_writer.SEQ_PATTERN`, so a test can check each line arrived once and in order.

    script = chain(
        numbered_lines(20_000, payload="GET /index.html 200"),
        long_line(40_000),
        no_trailing_newline("last-line-no-newline"),
    )
    container_id = dockerd.run_container("busy", script, log_opts={"max-size": "10k"})
"""

from __future__ import annotations

import shlex
from typing import Literal

Stream = Literal["stdout", "stderr"]

SIGNAL_DIR = "/tmp"
"""Where `wait_for_signal` looks, inside the container (the image has a writable /tmp)."""


def chain(*fragments: str) -> str:
    """Join fragments into one script, run in order (`;`: a failing fragment does not stop it)."""
    return "; ".join(fragment for fragment in fragments if fragment)


def _redirect(stream: Stream) -> str:
    return " >&2" if stream == "stderr" else ""


def numbered_line(seq: int, payload: str = "") -> str:
    """The text (without newline) that `numbered_lines` writes for `seq`: `seq=000042 payload`."""
    return f"seq={seq:06d} {payload}" if payload else f"seq={seq:06d}"


def numbered_lines(
    count: int, *, start: int = 0, payload: str = "", stream: Stream = "stdout"
) -> str:
    """Write `count` lines `seq=NNNNNN PAYLOAD\\n` numbered from `start`, one write each.

    A builtin-printf loop: ~50,000 lines/s here. `payload` is taken literally (no `%` or `\\`
    interpretation); `stream` picks stdout or stderr.
    """
    end = start + count
    line_format = shlex.quote("seq=%06d %s\\n" if payload else "seq=%06d\\n")
    arg = f" {shlex.quote(payload)}" if payload else ""
    return (
        f"i={start}; while [ $i -lt {end} ]; do "
        f"printf {line_format} $i{arg}{_redirect(stream)}; i=$((i+1)); done"
    )


def expected_numbered_lines(count: int, *, start: int = 0, payload: str = "") -> list[str]:
    """The `log` values (with their `\\n`) that `numbered_lines` with the same arguments makes."""
    return [numbered_line(seq, payload) + "\n" for seq in range(start, start + count)]


def long_line(size: int, *, char: str = "x", stream: Stream = "stdout") -> str:
    """Write one line of `size` bytes of `char` (one ASCII character) followed by `\\n`.

    json-file splits it into entries of 16384 bytes: all but the last have no `\\n`.
    """
    if len(char.encode()) != 1 or char in "\0\n'\\":
        raise ValueError(f"char must be one plain ASCII character, not {char!r}")
    redirect = _redirect(stream)
    return f"{{ head -c {size} /dev/zero | tr '\\0' '{char}'; echo; }}{redirect}"


def text_line(text: str, *, stream: Stream = "stdout") -> str:
    """Write `text` (taken literally) and a newline."""
    return f"printf '%s\\n' {shlex.quote(text)}{_redirect(stream)}"


def no_trailing_newline(text: str = "last-line-no-newline", *, stream: Stream = "stdout") -> str:
    """Write `text` without a newline, e.g. as a container's last output.

    json-file stores it as an entry whose `log` has no `\\n`, exactly like a split part.
    """
    return f"printf '%s' {shlex.quote(text)}{_redirect(stream)}"


def wait_for_signal(name: str) -> str:
    """Block until the file SIGNAL_DIR/NAME exists (polled every 10 ms inside the container).

    The test releases it with `dockerd.exec(container_id, "touch", signal_path(name))`: writing
    in phases lets a test look at the files between two phases (e.g. one rotation at a time).
    """
    return f"while [ ! -e {shlex.quote(signal_path(name))} ]; do usleep 10000; done"


def signal_path(name: str) -> str:
    """The path inside the container that `wait_for_signal(name)` waits for."""
    if not name or "/" in name:
        raise ValueError(f"bad signal name {name!r}")
    return f"{SIGNAL_DIR}/{name}"


def in_parallel(*fragments: str) -> str:
    """Run fragments at the same time (background subshells) and wait for all of them: e.g. one
    writer on stdout and one on stderr, as two threads of an application would."""
    return " & ".join(f"{{ {fragment}; }}" for fragment in fragments if fragment) + " & wait"


DEFAULT_PATTERN = "0123456789"
SEQ_PREFIX_BYTES = len(numbered_line(0)) + 1
"""`seq=NNNNNN ` before the pattern of a numbered long line (seq below 1,000,000)."""


def _check_pattern(pattern: str) -> None:
    if (
        not pattern
        or not pattern.isascii()
        or pattern.startswith("-")
        or any(char in pattern for char in "\0\n")
    ):
        raise ValueError(f"pattern must be ASCII without NUL or newline: {pattern!r}")


def patterned_text(prefix: str, size: int, pattern: str = DEFAULT_PATTERN) -> str:
    """What `patterned_line` writes (without its newline): `size` bytes, `prefix` then
    `pattern` repeated and cut to fit."""
    _check_pattern(pattern)
    filler = size - len(prefix.encode())
    if filler < 0:
        raise ValueError(f"size {size} is shorter than the prefix {prefix!r}")
    return prefix + (pattern * (filler // len(pattern) + 1))[:filler]


def patterned_line(
    prefix: str, size: int, pattern: str = DEFAULT_PATTERN, *, stream: Stream = "stdout"
) -> str:
    """Write one line of `size` bytes (plus `\\n`): `prefix` (literal) then `pattern` (literal
    ASCII, e.g. with `<>&"\\` and TAB that json-file escapes) repeated; see `patterned_text`.

    Unlike `long_line`'s single character, the content shows a part joined in the wrong order,
    twice, or from the other stream. json-file splits it into entries of 16384 bytes.
    """
    filler = len(patterned_text(prefix, size, pattern)) - len(prefix)
    return (
        f"{{ printf '%s' {shlex.quote(prefix)}; "
        f"yes {shlex.quote(pattern)} | tr -d '\\n' | head -c {filler}; echo; }}"
        f"{_redirect(stream)}"
    )


def paced_numbered_lines(
    count: int,
    *,
    start: int = 0,
    payload: str = "",
    stream: Stream = "stdout",
    burst: int = 10,
    pause_ms: int = 10,
    long_every: int = 0,
    long_size: int = 0,
    long_pattern: str = DEFAULT_PATTERN,
) -> str:
    """Like `numbered_lines`, but sleeping `pause_ms` after every `burst` lines: a steady writer
    (at most burst / pause_ms lines per ms) rather than a flood, so a reader can follow a
    small `max-file` window. With `long_every`, each line whose seq % long_every ==
    long_every - 1 is instead `seq=NNNNNN ` + `long_pattern` repeated, `long_size` bytes in
    all (`patterned_line`). `expected_paced_numbered_lines` gives the lines it writes.
    """
    end = start + count
    if end > 1_000_000:
        raise ValueError("seq must stay below 1,000,000 (six digits)")
    line_format = shlex.quote("seq=%06d %s\\n" if payload else "seq=%06d\\n")
    arg = f" {shlex.quote(payload)}" if payload else ""
    write = f"printf {line_format} $i{arg}"
    if long_every:
        filler = long_size - SEQ_PREFIX_BYTES
        _check_pattern(long_pattern)
        if filler < 0:
            raise ValueError(f"long_size must be at least {SEQ_PREFIX_BYTES}")
        long_write = (
            f"printf 'seq=%06d ' $i; yes {shlex.quote(long_pattern)} | tr -d '\\n' | "
            f"head -c {filler}; echo"
        )
        is_long = f"[ $((i % {long_every})) -eq {long_every - 1} ]"
        write = f"if {is_long}; then {long_write}; else {write}; fi"
    return (
        f"{{ i={start}; while [ $i -lt {end} ]; do {write}; i=$((i+1)); "
        f"if [ $((i % {burst})) -eq 0 ]; then usleep {pause_ms * 1000}; fi; done; }}"
        f"{_redirect(stream)}"
    )


def expected_paced_numbered_lines(
    count: int,
    *,
    start: int = 0,
    payload: str = "",
    long_every: int = 0,
    long_size: int = 0,
    long_pattern: str = DEFAULT_PATTERN,
) -> list[str]:
    """The lines (without newline) `paced_numbered_lines` with the same arguments writes."""
    return [
        patterned_text(f"seq={seq:06d} ", long_size, long_pattern)
        if long_every and seq % long_every == long_every - 1
        else numbered_line(seq, payload)
        for seq in range(start, start + count)
    ]
