"""Tests for CRI logs (shipper.sources.cri): decoding lines and rejoining P/F parts, pod log paths,
pod fields, and container ids from the kubelet's symlinks.

Entries are written here as containerd's CRI logger writes them: `<time> <stream> <tag> <bytes>`,
the time in Go's RFC3339Nano (trailing zeros trimmed), a line longer than
`max_container_log_line_size` (16 KiB by default) cut by bytes into `P` entries of exactly that
size and an `F` entry with the rest, the line ending dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from shipper import __version__
from shipper.docker_writer import DEFAULT_START_NS, format_docker_time
from shipper.model import Chunk, LogFile, RangeClaim, RecordGroup
from shipper.pipeline.acks import AckTracker
from shipper.processing.metadata import MetadataOptions, build_enrichment
from shipper.sources.cri import (
    FLAG_INVALID_CRI,
    PodLogRef,
    container_ids_from_symlinks,
    decode_cri_chunk,
    parse_pod_log_path,
    pod_enrichment,
)
from shipper.sources.docker_json import format_time_ns
from shipper.sources.partials import (
    FLAG_INVALID_TIME,
    FLAG_PARTIAL_HEAD_LOST,
    FLAG_TRUNCATED,
    PartialJoiner,
)
from shipper.sources.plain import FLAG_INVALID_UTF8

READ_TIME = "2030-01-01T00:00:00.000000000Z"
T0 = DEFAULT_START_NS
MAX_LINE = 16 * 1024  # containerd's default max_container_log_line_size
MAX = 1024 * 1024
UID = "0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"
POD_DIR = f"/var/log/pods/shop_web-7d4b9c-x2x9z_{UID}/nginx"

FILE_OLD = LogFile(
    source="cri", container_id="", path=f"{POD_DIR}/0.log.20240501-120000", handle="cri:1:21:1"
)
FILE = LogFile(source="cri", container_id="", path=f"{POD_DIR}/0.log", handle="cri:1:22:1")


def t(i: int = 0) -> str:
    """The normalized time of entry time T0 + i ms."""
    return format_time_ns(T0 + i * 1_000_000)


def entry(message: bytes, *, stream: str = "stdout", tag: str = "F", i: int = 0) -> bytes:
    return f"{format_docker_time(T0 + i * 1_000_000)} {stream} {tag} ".encode() + message + b"\n"


def containerd_entries(
    line: bytes, *, stream: str = "stdout", i: int = 0, max_len: int = MAX_LINE
) -> list[bytes]:
    """The entries containerd writes for one line the application wrote (without its newline):
    parts of exactly `max_len` bytes tagged P, the rest tagged F, each part timed when written."""
    pieces = [line[n : n + max_len] for n in range(0, len(line), max_len)] or [b""]
    return [
        entry(piece, stream=stream, tag="F" if n == len(pieces) - 1 else "P", i=i + n)
        for n, piece in enumerate(pieces)
    ]


def decode(
    data: bytes,
    *,
    start: int = 0,
    file: LogFile = FILE,
    joiner: PartialJoiner | None = None,
    hold: RangeClaim | None = None,
) -> RecordGroup:
    return decode_cri_chunk(
        Chunk(file, start, data), read_time=READ_TIME, joiner=joiner, hold=hold, now=0.0
    )


def text(n: int, seed: str = "abcdefghijklmnopqrstuvwxyz0123456789") -> bytes:
    """`n` bytes of ASCII that are not all the same, so a misplaced part would show."""
    return (seed * (n // len(seed) + 1))[:n].encode()


class Lane:
    """A file tracked by a real AckTracker, registering each chunk's range as the tailer does."""

    def __init__(self, handle: str, start: int = 0) -> None:
        self.tracker = AckTracker()
        self.handle = handle
        self.settled: list[int] = []
        self.tracker.track(handle, start, self.settled.append)

    def register(self, end: int) -> RangeClaim:
        return self.tracker.register(self.handle, end)

    @property
    def offset(self) -> int:
        return self.tracker.settled_offset(self.handle)


# --- whole lines --------------------------------------------------------------------------------


def test_full_lines() -> None:
    lines = [
        entry(b"GET /index.html 200", i=0),
        entry(b"warning: disk 91% full", stream="stderr", i=1),
        entry(b"  indented, with  two spaces  ", i=2),
    ]
    group = decode(b"".join(lines), start=100)
    assert group.messages == [
        "GET /index.html 200",
        "warning: disk 91% full",
        "  indented, with  two spaces  ",
    ]
    assert group.streams == ["stdout", "stderr", "stdout"]
    assert group.timestamps == [t(0), t(1), t(2)]
    assert group.offsets == [100, 100 + len(lines[0]), 100 + len(lines[0]) + len(lines[1])]
    assert group.flags == {}
    assert (group.start, group.end) == (100, 100 + sum(map(len, lines)))
    assert (group.invalid_json, group.invalid_time) == (0, 0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000000000Z"),  # RFC3339Nano: no dot
        ("2024-05-01T12:00:00.12Z", "2024-05-01T12:00:00.120000000Z"),
        ("2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00.123456789Z"),
        # CRI-O on a node whose clock is not UTC writes the local offset.
        ("2016-10-06T00:17:09.669794202+02:00", "2016-10-05T22:17:09.669794202Z"),
        ("2024-01-01T01:30:00.5+05:30", "2023-12-31T20:00:00.500000000Z"),
        ("2024-05-01T07:00:00-05:00", "2024-05-01T12:00:00.000000000Z"),
    ],
)
def test_times_are_normalized_to_utc_with_nine_digits(raw: str, expected: str) -> None:
    group = decode(f"{raw} stdout F hello\n".encode())
    assert group.timestamps == [expected]
    assert group.messages == ["hello"]
    assert group.flags == {}


@pytest.mark.parametrize(
    "raw",
    ["2024-13-01T12:00:00Z", "yesterday", "2024-05-01T12:00:00.1234567890Z", "2024-05-01T12:00:00"],
)
def test_unusable_time_ships_with_the_read_time(raw: str) -> None:
    group = decode(f"{raw} stderr F boom\n".encode())
    assert group.messages == ["boom"]
    assert group.streams == ["stderr"]
    assert group.timestamps == [READ_TIME]
    assert group.flags == {0: (FLAG_INVALID_TIME,)}
    assert (group.invalid_time, group.invalid_json) == (1, 0)


def test_empty_message_is_an_empty_line_the_application_wrote() -> None:
    written = b"".join(containerd_entries(b""))
    assert written.endswith(b" F \n")  # the space before the message is there
    group = decode(written + f"{format_docker_time(T0)} stdout F\n".encode())
    assert group.messages == ["", ""]
    assert group.flags == {}


def test_blank_lines_are_skipped_and_offsets_stay_right() -> None:
    a, b = entry(b"a"), entry(b"b")
    data = b"\n" + a + b"\r\n" + b
    group = decode(data, start=10)
    assert group.messages == ["a", "b"]
    assert group.offsets == [11, 11 + len(a) + 2]


def test_last_line_without_newline_is_decoded() -> None:
    # The tailer stopped waiting for the rest of the line.
    data = entry(b"one") + entry(b"two")[:-1]
    group = decode(data)
    assert group.messages == ["one", "two"]


def test_a_trailing_carriage_return_is_the_line_ending() -> None:
    group = decode(entry(b"dos line\r") + entry(b"mid\rline"))
    assert group.messages == ["dos line", "mid\rline"]


def test_invalid_utf8_is_replaced_and_flagged() -> None:
    group = decode(entry(b"caf\xe9 ok") + entry("café".encode()))
    assert group.messages == ["caf\ufffd ok", "café"]
    assert group.flags == {0: (FLAG_INVALID_UTF8,)}


def test_tags_with_more_letters() -> None:
    data = (
        entry(b"whole", tag="F:x")
        + entry(b"part ", tag="P:x:y")
        + entry(b"rest", tag="F")
        + entry(b"odd", tag="Q:F")
    )
    group = decode(data, joiner=PartialJoiner(MAX))
    assert group.messages == ["whole", "part rest", entry(b"odd", tag="Q:F")[:-1].decode()]
    assert group.flags == {2: (FLAG_INVALID_CRI,)}


# --- lines not in the format --------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"just some text",
        b'{"log":"docker json\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}',
        b"2024-05-01T12:00:00Z stdout",  # no tag
        b"2024-05-01T12:00:00Z stdin F typed",  # no such stream
        b"2024-05-01T12:00:00Z STDOUT F shouting",
        b"2024-05-01T12:00:00Z stdout X what",  # no such tag
        b"2024-05-01T12:00:00Z stdout  F two spaces",  # empty tag
        b"2024-05-01T12:00:00Z stdout f lower",
        b"2024-05-01T12:00:00Z\tstdout\tF\ttabs",
        b"2024-05-01T12:00:00Z stdout F\xff binary tag",
    ],
)
def test_malformed_line_ships_as_raw_text(line: bytes) -> None:
    before, after = entry(b"before"), entry(b"after")
    group = decode(before + line + b"\r\n" + after, joiner=PartialJoiner(MAX))
    assert group.messages == ["before", line.decode("utf-8", "replace"), "after"]
    assert group.streams == ["stdout", "", "stdout"]
    assert group.timestamps == [t(), READ_TIME, t()]
    assert group.offsets == [0, len(before), len(before) + len(line) + 2]
    assert group.flags == {1: (FLAG_INVALID_CRI,)}
    assert (group.invalid_json, group.invalid_time) == (1, 0)


# --- P and F ------------------------------------------------------------------------------------


def test_long_line_cut_by_containerd_is_one_record() -> None:
    long = text(40 * 1024)
    parts = containerd_entries(long, i=5)
    assert [p.split(b" ", 3)[2] for p in parts] == [b"P", b"P", b"F"]
    assert [len(p.split(b" ", 3)[3]) - 1 for p in parts] == [MAX_LINE, MAX_LINE, 8 * 1024]
    before = entry(b"before")
    after = entry(b"after", i=9)
    data = before + b"".join(parts) + after
    lane = Lane(FILE.handle)
    claim = lane.register(len(data))
    group = decode(data, joiner=PartialJoiner(MAX), hold=claim)

    assert group.messages == ["before", long.decode(), "after"]
    assert group.offsets == [0, len(before), len(data) - len(after)]
    assert group.timestamps == [t(0), t(5), t(9)]  # a joined line has its first part's time
    assert group.flags == {}
    # Settling the group and what it holds settles the whole chunk.
    claim.release()
    assert lane.offset == len(before)  # the joined record holds from its first part
    for held in group.held:
        held.release()
    assert lane.offset == len(data)


def test_line_of_exactly_the_limit_is_not_cut() -> None:
    parts = containerd_entries(text(MAX_LINE))
    assert len(parts) == 1
    group = decode(parts[0], joiner=PartialJoiner(MAX))
    assert group.messages == [text(MAX_LINE).decode()]
    assert group.held == []
    parts = containerd_entries(text(2 * MAX_LINE))
    assert [p.split(b" ", 3)[2] for p in parts] == [b"P", b"F"]
    assert decode(b"".join(parts), joiner=PartialJoiner(MAX)).messages == [
        text(2 * MAX_LINE).decode()
    ]


def test_interleaved_stdout_and_stderr_parts_join_per_stream() -> None:
    out = text(20_000)
    err = text(17_000, seed="ZYXWVUTSRQPONMLKJIHGFEDCBA")
    out_parts = containerd_entries(out, stream="stdout", i=0)
    err_parts = containerd_entries(err, stream="stderr", i=1)
    # The runtime copies each stream in its own goroutine: their entries interleave, and a
    # whole line of one stream may come between the parts of the other's.
    between = entry(b"err line", stream="stderr", i=2)
    lines = [out_parts[0], err_parts[0], out_parts[1], err_parts[1], between]
    offsets = [sum(map(len, lines[:n])) for n in range(len(lines))]
    group = decode(b"".join(lines), joiner=PartialJoiner(MAX))
    assert group.messages == [out.decode(), err.decode(), "err line"]
    assert group.streams == ["stdout", "stderr", "stderr"]
    assert group.offsets == [offsets[0], offsets[1], offsets[4]]
    assert group.timestamps == [t(0), t(1), t(2)]


def test_several_short_partial_entries() -> None:
    # CRI-O writes what it read without a newline as P: a prompt written in pieces.
    data = (
        entry(b"Enter ", tag="P", i=0)
        + entry(b"your ", tag="P", i=1)
        + entry(b"name: ", tag="P", i=2)
        + entry(b"", tag="F", i=3)
    )
    group = decode(data, joiner=PartialJoiner(MAX))
    assert group.messages == ["Enter your name: "]
    assert group.timestamps == [t(0)]
    assert group.offsets == [0]


def test_part_at_chunk_end_continues_in_the_next_chunk() -> None:
    long = text(30_000)
    first, last = containerd_entries(long, i=1)
    head = entry(b"head")
    chunk1 = head + first
    chunk2 = last + entry(b"tail", i=3)
    joiner = PartialJoiner(MAX)
    lane = Lane(FILE.handle)
    claim1 = lane.register(len(chunk1))
    group1 = decode(chunk1, joiner=joiner, hold=claim1)
    assert group1.messages == ["head"]
    assert list(joiner.pending) == ["stdout"]
    claim1.release()  # group 1 settled: the checkpoint stops where the waiting part starts
    assert lane.offset == len(head)

    claim2 = lane.register(len(chunk1) + len(chunk2))
    group2 = decode(chunk2, start=len(chunk1), joiner=joiner, hold=claim2)
    assert group2.messages == [long.decode(), "tail"]
    assert group2.offsets == [len(head), len(chunk1) + len(last)]
    assert group2.timestamps == [t(1), t(3)]
    assert group2.heads == {}  # same file
    assert joiner.pending == {}
    claim2.release()
    assert lane.offset == len(head)  # the joined record has not settled yet
    for held in group2.held:
        held.release()
    assert lane.offset == len(chunk1) + len(chunk2)


def test_part_before_a_rotation_joins_the_rest_in_the_new_file() -> None:
    long = text(20_000)
    first, last = containerd_entries(long)
    old_start = 5000
    joiner = PartialJoiner(MAX)
    old_lane = Lane(FILE_OLD.handle, old_start)
    old_claim = old_lane.register(old_start + len(first))
    group_old = decode(first, start=old_start, file=FILE_OLD, joiner=joiner, hold=old_claim)
    assert len(group_old) == 0
    new_lane = Lane(FILE.handle)
    new_claim = new_lane.register(len(last))
    group_new = decode(last, file=FILE, joiner=joiner, hold=new_claim)
    assert group_new.messages == [long.decode()]
    assert group_new.offsets == [old_start]
    assert group_new.heads == {0: FILE_OLD}
    old_claim.release()
    new_claim.release()
    assert old_lane.offset == old_start  # the old file keeps the first part until it settles
    for held in group_new.held:
        held.release()
    assert old_lane.offset == old_start + len(first)
    assert new_lane.offset == len(last)


def test_partial_without_joiner_is_a_record_of_its_own() -> None:
    parts = containerd_entries(text(20_000))
    group = decode(b"".join(parts))
    assert group.messages == [text(20_000)[:MAX_LINE].decode(), text(20_000)[MAX_LINE:].decode()]
    assert group.flags == {}


def test_first_part_with_bad_time_flags_the_joined_record() -> None:
    data = b"not-a-time stdout P abc\n" + entry(b"def", i=4)
    group = decode(data, joiner=PartialJoiner(MAX))
    assert group.messages == ["abcdef"]
    assert group.timestamps == [READ_TIME]
    assert group.flags == {0: (FLAG_INVALID_TIME,)}
    assert group.invalid_time == 1


def test_joined_line_over_the_cap_is_truncated() -> None:
    long = text(40 * 1024)
    group = decode(b"".join(containerd_entries(long)), joiner=PartialJoiner(20_000))
    assert group.messages == [long[:20_000].decode()]
    assert group.flags == {0: (FLAG_TRUNCATED,)}


def test_crlf_line_cut_between_cr_and_the_end() -> None:
    # An application writing "...\r\n": containerd drops "\r\n" only when both are in one read;
    # a part that ends in "\r" leaves it to the joined line's end.
    data = entry(b"abc\r", tag="P") + entry(b"", tag="F")
    assert decode(data, joiner=PartialJoiner(MAX)).messages == ["abc"]


def test_invalid_utf8_in_the_last_part_flags_the_joined_record() -> None:
    data = entry(b"abc", tag="P") + entry(b"d\xffe", tag="F")
    group = decode(data, joiner=PartialJoiner(MAX))
    assert group.messages == ["abcd\ufffde"]
    assert group.flags == {0: (FLAG_INVALID_UTF8,)}


def test_character_cut_at_a_part_boundary_loses_only_itself() -> None:
    # containerd cuts by bytes: 16384 is not a multiple of 3, so a "€" is split between parts.
    line = "€" * 6000
    encoded = line.encode()
    assert MAX_LINE % 3 != 0
    group = decode(b"".join(containerd_entries(encoded)), joiner=PartialJoiner(MAX))
    (message,) = group.messages
    intact = message.replace("\ufffd", "")
    assert "€" * 5999 in intact
    assert set(intact) == {"€"}
    orjson.dumps(message)  # no lone surrogates: every encoder can write it


def test_head_lost_flags_the_next_line_of_that_stream_only() -> None:
    joiner = PartialJoiner(MAX)
    joiner.head_lost.add("stdout")
    data = entry(b"err", stream="stderr") + entry(b"rest of a line")
    group = decode(data, joiner=joiner)
    assert group.messages == ["err", "rest of a line"]
    assert group.flags == {1: (FLAG_PARTIAL_HEAD_LOST,)}
    assert joiner.head_lost == set()


# --- pod log paths ------------------------------------------------------------------------------


def test_pod_log_path() -> None:
    ref = parse_pod_log_path(f"/var/log/pods/shop_web-7d4b9c-x2x9z_{UID}/nginx/0.log")
    assert ref == PodLogRef(
        namespace="shop",
        pod_name="web-7d4b9c-x2x9z",
        pod_uid=UID,
        container_name="nginx",
        restart_count=0,
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # A static pod's uid is the hex MD5 of its manifest, not a UUID.
        (
            "/var/log/pods/kube-system_kube-apiserver-cp-1_8c6ee1d8f3e1e7a1e4a5d2a6c4f3e9b1/"
            "kube-apiserver/12.log",
            PodLogRef(
                "kube-system",
                "kube-apiserver-cp-1",
                "8c6ee1d8f3e1e7a1e4a5d2a6c4f3e9b1",
                "kube-apiserver",
                12,
            ),
        ),
        # A pod name is a DNS subdomain: dots allowed; the root may be mounted elsewhere.
        (
            f"/host/var/log/pods/a_my.pod.v2_{UID}/c-1/3.log",
            PodLogRef("a", "my.pod.v2", UID, "c-1", 3),
        ),
    ],
)
def test_pod_log_path_variants(path: str, expected: PodLogRef) -> None:
    assert parse_pod_log_path(path) == expected


def test_longest_names_are_accepted() -> None:
    pod = ".".join(["p" * 63] * 4)[:253].rstrip(".")
    path = f"/var/log/pods/{'n' * 63}_{pod}_{UID}/{'c' * 63}/0.log"
    assert parse_pod_log_path(path) == PodLogRef("n" * 63, pod, UID, "c" * 63, 0)


@pytest.mark.parametrize(
    "path",
    [
        f"/var/log/pods/shop_web_{UID}/nginx/0.log.20240101-120000",  # a rotated file
        f"/var/log/pods/shop_web_{UID}/nginx/0.log.gz",
        f"/var/log/pods/shop_web_{UID}/nginx/01.log",
        f"/var/log/pods/shop_web_{UID}/nginx/x.log",
        f"/var/log/pods/shop_web_{UID}/nginx/-1.log",
        f"/var/log/pods/shop_web_{UID}/nginx/0.txt",
        f"/var/log/pods/shop_my_web_{UID}/nginx/0.log",  # "_" cannot be in a pod name
        "/var/log/pods/shop_web/nginx/0.log",  # no uid
        f"/var/log/pods/Shop_web_{UID}/nginx/0.log",
        f"/var/log/pods/shop_Web_{UID}/nginx/0.log",
        f"/var/log/pods/shop_web_{UID}/Nginx/0.log",
        f"/var/log/pods/shop_web_{UID}/ng_inx/0.log",
        f"/var/log/pods/shop_web_{UID}/ng.inx/0.log",  # a container name is a label: no dots
        f"/var/log/pods/-shop_web_{UID}/nginx/0.log",
        f"/var/log/pods/shop_web-_{UID}/nginx/0.log",
        f"/var/log/pods/shop_web..a_{UID}/nginx/0.log",
        f"/var/log/pods/{'n' * 64}_web_{UID}/nginx/0.log",
        f"/var/log/pods/shop_{'p' * 63}.{'p' * 63}.{'p' * 63}.{'p' * 63}_{UID}/nginx/0.log",
        f"/var/log/pods/shop_web_{UID}/{'c' * 64}/0.log",
        f"/var/log/pods/shop_web_{UID.upper()}/nginx/0.log",
        "/var/log/pods/shop_web_0f1e2d3c4b5a49788a9b0c1d2e3f4a5/nginx/0.log",  # 31 hex
        "/var/log/pods/shop_web_0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5/nginx/0.log",
        "/var/log/pods/shop_web_not-a-uid/nginx/0.log",
        f"/var/log/pods/{UID}/nginx_0.log",  # the layout of kubelets before 1.14
        f"shop_web_{UID}/nginx/0.log",  # too few parts to know
        f"/var/log/pods/shop_web_{UID}/nginx/",
        "",
    ],
)
def test_other_paths_are_not_pod_logs(path: str) -> None:
    assert parse_pod_log_path(path) is None


# --- pod fields ---------------------------------------------------------------------------------


def test_pod_enrichment_fields() -> None:
    ref = PodLogRef("shop", "web-1", UID, "nginx", 2)
    document = pod_enrichment(ref, host_name="node-7", container_id="ab" * 32)
    assert document == {
        "container": {"id": "ab" * 32, "name": "nginx"},
        "kubernetes": {
            "namespace": "shop",
            "pod": {"name": "web-1", "uid": UID},
            "container": {"name": "nginx"},
        },
        "host": {"name": "node-7"},
        "agent": {"type": "shipper", "version": __version__},
        "ecs": {"version": document["ecs"]["version"]},
    }
    # The fields every source shares are the docker source's, in its order.
    docker = build_enrichment("ab" * 32, None, MetadataOptions(host_name="node-7")).document
    assert list(document) == ["container", "kubernetes", "host", "agent", "ecs"]
    for key in ("host", "agent", "ecs"):
        assert document[key] == docker[key]
    assert list(document["container"]) == ["id", "name"]
    orjson.dumps(document)


def test_pod_enrichment_without_container_id() -> None:
    document = pod_enrichment(PodLogRef("shop", "web-1", UID, "nginx", 0), host_name="n")
    assert document["container"] == {"name": "nginx"}


# --- container ids from the kubelet's symlinks --------------------------------------------------


def make_pod_log(root: Path, namespace: str, pod: str, container: str, restart: int) -> Path:
    directory = root / f"{namespace}_{pod}_{UID}" / container
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{restart}.log"
    path.write_bytes(b"")
    return path


def test_container_ids_from_symlinks(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    links = tmp_path / "containers"
    links.mkdir()
    first = make_pod_log(pods, "shop", "web-1", "nginx", 0)
    second = make_pod_log(pods, "shop", "web-1", "nginx", 1)
    sidecar = make_pod_log(pods, "shop", "web-1", "envoy", 0)
    id1, id2, id3 = "a1" * 32, "b2" * 32, "c3" * 32
    (links / f"web-1_shop_nginx-{id1}.log").symlink_to(first)
    (links / f"web-1_shop_nginx-{id2}.log").symlink_to(second)
    # A relative link resolves from the links' directory.
    (links / f"web-1_shop_envoy-{id3}.log").symlink_to(os.path.relpath(sidecar, links))
    # Not links the kubelet makes: ignored.
    (links / f"web-1_shop_x-{'d4' * 32}.log").write_bytes(b"")  # a file, not a link
    (links / f"web-1_shop_x-{'e5' * 31}.log").symlink_to(first)  # short id
    (links / f"web-1_shop_x-{'F6' * 32}.log").symlink_to(first)  # not lowercase hex
    (links / f"web-1_shop_x-{'a7' * 32}.log.1").symlink_to(first)
    (links / f"{'a8' * 32}.log").symlink_to(first)  # no name before the id

    assert container_ids_from_symlinks(str(links)) == {
        os.path.realpath(first): id1,
        os.path.realpath(second): id2,
        os.path.realpath(sidecar): id3,
    }


def test_lookup_is_by_real_path_through_linked_directories(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "pods"
    log = make_pod_log(real, "shop", "web-1", "nginx", 0)
    (tmp_path / "var-log-pods").symlink_to(real)  # /var/log/pods linked to another disk
    via_link = tmp_path / "var-log-pods" / log.relative_to(real)
    links = tmp_path / "containers"
    links.mkdir()
    (links / f"web-1_shop_nginx-{'a1' * 32}.log").symlink_to(via_link)

    ids = container_ids_from_symlinks(str(links))
    assert ids == {str(log): "a1" * 32}
    assert ids[os.path.realpath(via_link)] == "a1" * 32


def test_missing_or_unlistable_directory_gives_no_ids(tmp_path: Path) -> None:
    assert container_ids_from_symlinks(str(tmp_path / "absent")) == {}
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    assert container_ids_from_symlinks(str(not_a_directory)) == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a directory whatever its mode")
def test_unreadable_directory_gives_no_ids(tmp_path: Path) -> None:
    links = tmp_path / "containers"
    links.mkdir()
    (links / f"p_n_c-{'a1' * 32}.log").symlink_to(tmp_path)
    links.chmod(0)
    try:
        assert container_ids_from_symlinks(str(links)) == {}
    finally:
        links.chmod(0o755)
