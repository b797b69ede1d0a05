"""Tests for file identity: fingerprints of a file's first bytes, and reading plain or gzip content.

Real files in tmp_path throughout: identity is about what the kernel does to names and inodes
(rename, unlink, inode reuse) and about the bytes on disk, so a fake would prove nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.docker_writer import DEFAULT_START_NS, encode_entry
from shipper.sources.identity import (
    HEAD_BYTES,
    TAIL_BYTES,
    fingerprint,
    first_line,
    identity_bytes,
    prefix_fingerprints,
    stable_id,
)
from shipper.sources.logfile import GzipLogReader, LogReader, open_log


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_lines(count: int, *, start_ns: int = DEFAULT_START_NS, tag: str = "line") -> bytes:
    """`count` json-file entries as dockerd writes them (times 1 ms apart)."""
    return b"".join(
        encode_entry(f"{tag} {i} some payload\n".encode(), "stdout", start_ns + i * 1_000_000)
        for i in range(count)
    )


def docker_file_of_size(size: int, *, start_ns: int = DEFAULT_START_NS) -> bytes:
    """Whole json-file entries adding up to exactly `size` bytes (the last one padded)."""
    data = b""
    i = 0
    while True:
        empty = encode_entry(b"\n", "stdout", start_ns + i * 1_000_000)
        room = size - len(data)
        if room < 2 * len(empty) + 64:
            # The last entry: pad its message so that the file ends exactly at `size`.
            body = b"p" * (room - len(empty)) + b"\n"
            last = encode_entry(body, "stdout", start_ns + i * 1_000_000)
            assert len(last) == room
            return data + last
        data += encode_entry(
            f"entry {i} padding text\n".encode(), "stdout", start_ns + i * 1_000_000
        )
        i += 1


def head_of(path: Path) -> bytes:
    reader = open_log(str(path))
    try:
        return reader.head()
    finally:
        reader.close()


def checkpoint_of(
    path: Path, *, offset: int, source: str = "docker", head: bytes | None = None
) -> FileCheckpoint:
    """The checkpoint the tailer records for `path` as it is now (its head, device, inode)."""
    head = head_of(path) if head is None else head
    st = os.stat(path)
    return FileCheckpoint(
        fingerprint=fingerprint(head),
        head_len=len(head),
        path=str(path),
        device=st.st_dev,
        inode=st.st_ino,
        offset=offset,
        source=source,
        updated_at=1_700_000_000.0,
        size=st.st_size,
    )


def find_for(store: CheckpointStore, path: Path) -> FileCheckpoint | None:
    """Look `path` up as the tailer does: by the content of its head, then device/inode, path."""
    st = os.stat(path)
    return store.find(
        prefix_fingerprints(head_of(path)), path=str(path), device=st.st_dev, inode=st.st_ino
    )


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "state" / "checkpoints.json", on_corrupt="fail")


def gzip_with_extra(data: bytes, extra: bytes) -> bytes:
    """A gzip member as Docker's compressFile writes it (Go's gzip.Writer with Header.Extra).

    gzip.GzipFile cannot write FEXTRA, so the header is built by hand (RFC 1952): FLG=FEXTRA,
    MTIME 0, XFL 0, OS 255, XLEN + extra; then raw deflate, CRC-32 and ISIZE.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


def gzip_wbits31_with_extra(data: bytes, extra: bytes) -> bytes:
    """The other way round: zlib's own gzip wrapper (wbits=31), then FEXTRA patched in."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    plain = compressor.compress(data) + compressor.flush()
    assert plain[3] == 0  # zlib writes no optional fields
    flg = bytes([plain[3] | 0x04])
    return plain[:3] + flg + plain[4:10] + struct.pack("<H", len(extra)) + extra + plain[10:]


LAST_TIME_EXTRA = b'{"lastTime":"2024-05-01T12:00:03.123456789Z"}'


# --- rename -----------------------------------------------------------------------------------


def test_renamed_file_keeps_its_fingerprint_and_checkpoint(
    tmp_path: Path, store: CheckpointStore
) -> None:
    current = tmp_path / "abc-json.log"
    current.write_bytes(docker_lines(100))
    before = head_of(current)
    store.set(checkpoint_of(current, offset=1234))
    # A decoy at the same path as the rename target, with other content: content decides.
    decoy = tmp_path / "decoy.log"
    decoy.write_bytes(docker_lines(50, start_ns=DEFAULT_START_NS + 7, tag="other"))
    store.set(dataclasses.replace(checkpoint_of(decoy, offset=99), path=str(current) + ".1"))

    rotated = tmp_path / "abc-json.log.1"
    inode = os.stat(current).st_ino
    os.rename(current, rotated)

    assert os.stat(rotated).st_ino == inode
    after = head_of(rotated)
    assert after == before
    assert fingerprint(after) == fingerprint(before)
    assert stable_id(after) == stable_id(before)
    found = find_for(store, rotated)
    assert found is not None
    assert found.offset == 1234
    assert found.path == str(current)  # the old name: the tailer records the move, not find()


def test_copy_under_another_inode_is_found_by_content(
    tmp_path: Path, store: CheckpointStore
) -> None:
    """Device + inode only help: content alone finds the checkpoint (e.g. a restore, a twin)."""
    original = tmp_path / "abc-json.log"
    original.write_bytes(docker_lines(40))
    store.set(checkpoint_of(original, offset=500))
    copy = tmp_path / "elsewhere.log"
    copy.write_bytes(original.read_bytes())
    assert os.stat(copy).st_ino != os.stat(original).st_ino

    found = find_for(store, copy)
    assert found is not None
    assert found.offset == 500


# --- inode reuse ------------------------------------------------------------------------------


def test_inode_reuse_with_other_content_does_not_match(
    tmp_path: Path, store: CheckpointStore
) -> None:
    path = tmp_path / "abc-json.log"
    path.write_bytes(docker_lines(100, tag="old"))
    old = checkpoint_of(path, offset=4000)
    store.set(old)
    path.unlink()

    # Docker's next file: same name, and (on ext4/tmpfs) almost always the freed inode number.
    path.write_bytes(docker_lines(100, start_ns=DEFAULT_START_NS + 10**12, tag="new"))
    st = os.stat(path)
    if (st.st_dev, st.st_ino) != (old.device, old.inode):
        # The filesystem did not hand the inode out again: make the stored entry claim the new
        # file's inode, which is the situation under test (same path, same inode, new content).
        store.set(dataclasses.replace(old, device=st.st_dev, inode=st.st_ino))

    assert find_for(store, path) is None


def test_inode_reuse_by_a_shorter_new_file_does_not_match(
    tmp_path: Path, store: CheckpointStore
) -> None:
    """The new file is shorter than the old checkpoint's head: no prefix to compare, no match."""
    path = tmp_path / "abc-json.log"
    path.write_bytes(docker_lines(100))
    store.set(checkpoint_of(path, offset=4000))
    path.unlink()
    path.write_bytes(docker_lines(1, start_ns=DEFAULT_START_NS + 1))

    assert len(head_of(path)) < HEAD_BYTES
    assert find_for(store, path) is None


def test_first_lines_differing_only_in_time_are_different_files(
    tmp_path: Path, store: CheckpointStore
) -> None:
    """The same program writing the same first line in two containers: the nanosecond time in
    Docker's first entry keeps their identities apart, even for short files."""
    a = tmp_path / "a-json.log"
    b = tmp_path / "b-json.log"
    a.write_bytes(encode_entry(b"starting\n", "stdout", DEFAULT_START_NS))
    b.write_bytes(encode_entry(b"starting\n", "stdout", DEFAULT_START_NS + 1))
    store.set(checkpoint_of(a, offset=10))

    assert find_for(store, b) is None
    assert stable_id(head_of(a)) != stable_id(head_of(b))


# --- gzip twins -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def content() -> bytes:
    # ~120 KB, several of gzip's internal read buffers, with lines of varied length.
    rng = random.Random(1234)
    return b"".join(
        encode_entry(
            (f"line {i} " + "x" * rng.randint(0, 300) + "\n").encode(),
            "stderr" if i % 7 == 0 else "stdout",
            DEFAULT_START_NS + i * 1_234_567,
        )
        for i in range(1000)
    )


GZIP_WRITERS = {
    "gzip-module": lambda data: gzip.compress(data, mtime=0),
    "fextra-by-hand": lambda data: gzip_with_extra(data, LAST_TIME_EXTRA),
    "fextra-zlib-wbits31": lambda data: gzip_wbits31_with_extra(data, LAST_TIME_EXTRA),
}


@pytest.fixture(params=sorted(GZIP_WRITERS))
def twins(request: pytest.FixtureRequest, tmp_path: Path, content: bytes) -> tuple[Path, Path]:
    plain = tmp_path / "abc-json.log.1"
    plain.write_bytes(content)
    compressed = tmp_path / "abc-json.log.1.gz"
    compressed.write_bytes(GZIP_WRITERS[request.param](content))
    assert gzip.decompress(compressed.read_bytes()) == content  # the writer itself is right
    return plain, compressed


def test_hand_written_header_has_fextra(tmp_path: Path, content: bytes) -> None:
    for data in (
        gzip_with_extra(content, LAST_TIME_EXTRA),
        gzip_wbits31_with_extra(content, LAST_TIME_EXTRA),
    ):
        assert data[3] == 0x04
        (xlen,) = struct.unpack("<H", data[10:12])
        assert data[12 : 12 + xlen] == LAST_TIME_EXTRA


def test_gzip_twin_has_same_head_and_fingerprint(
    twins: tuple[Path, Path], content: bytes, store: CheckpointStore
) -> None:
    plain, compressed = twins
    reader = open_log(str(compressed))
    try:
        assert isinstance(reader, GzipLogReader)
        assert reader.compressed
        head = reader.head()
    finally:
        reader.close()
    plain_head = head_of(plain)
    assert plain_head == content[:HEAD_BYTES]
    assert head == plain_head
    assert fingerprint(head) == fingerprint(plain_head)
    assert stable_id(head) == stable_id(plain_head)

    # The checkpoint taken on `.1` is the one `.1.gz` resumes from (content, not name or inode).
    store.set(checkpoint_of(plain, offset=7777))
    found = find_for(store, compressed)
    assert found is not None
    assert found.offset == 7777


def test_gzip_read_equals_plain_bytes_at_any_offset(
    twins: tuple[Path, Path], content: bytes
) -> None:
    _, compressed = twins
    reader = open_log(str(compressed))
    try:
        rng = random.Random(42)
        size = len(content)
        offsets = [0, 1, HEAD_BYTES, size - 1, size, size + 100, 5, 0]
        # Forwards, backwards and jumps, with sizes both small and past the end.
        offsets += [rng.randrange(0, size) for _ in range(60)]
        offsets += sorted(rng.randrange(0, size) for _ in range(20))
        offsets += sorted((rng.randrange(0, size) for _ in range(20)), reverse=True)
        for offset in offsets:
            n = rng.choice([1, 17, 4096, 65536, 200_000])
            assert reader.read(offset, n) == content[offset : offset + n], (offset, n)
        # Sequential reads, as the tailer does them.
        position, pieces = 0, []
        while data := reader.read(position, 10_000):
            pieces.append(data)
            position += len(data)
        assert b"".join(pieces) == content
        assert reader.read(0, 64) == content[:64]  # back to the start after EOF
    finally:
        reader.close()


def test_gzip_content_size_is_the_uncompressed_size(
    twins: tuple[Path, Path], content: bytes
) -> None:
    plain, compressed = twins
    gz_reader = open_log(str(compressed))
    plain_reader = open_log(str(plain))
    try:
        assert gz_reader.content_size() == len(content)
        assert plain_reader.content_size() == len(content)
        assert os.path.getsize(compressed) < len(content)
    finally:
        gz_reader.close()
        plain_reader.close()


def test_gzip_reader_keeps_working_after_unlink(twins: tuple[Path, Path], content: bytes) -> None:
    _, compressed = twins
    reader = open_log(str(compressed))
    try:
        compressed.unlink()
        assert reader.read(1000, 500) == content[1000:1500]
        assert reader.content_size() == len(content)
    finally:
        reader.close()


def test_open_log_goes_by_magic_bytes_not_name(tmp_path: Path, content: bytes) -> None:
    disguised = tmp_path / "abc-json.log"  # gzip under a plain name
    disguised.write_bytes(gzip.compress(content))
    named_gz = tmp_path / "abc-json.log.2.gz"  # plain under a .gz name
    named_gz.write_bytes(content)
    for path, kind in ((disguised, GzipLogReader), (named_gz, LogReader)):
        reader = open_log(str(path))
        try:
            assert type(reader) is kind
            assert reader.head() == content[:HEAD_BYTES]
        finally:
            reader.close()


def test_empty_gzip_has_no_head(tmp_path: Path) -> None:
    path = tmp_path / "abc-json.log.1.gz"
    path.write_bytes(gzip.compress(b""))
    reader = open_log(str(path))
    try:
        assert reader.compressed
        assert reader.head() == b""
        assert reader.content_size() == 0
    finally:
        reader.close()


def test_incomplete_gzip_read_raises_oserror(tmp_path: Path, content: bytes) -> None:
    """A `.gz` Docker is still writing (or a crash left): an OSError the tailer handles, not an
    EOFError escaping from the gzip module."""
    path = tmp_path / "abc-json.log.1.gz"
    path.write_bytes(gzip_with_extra(content, LAST_TIME_EXTRA)[:2000])
    reader = open_log(str(path))
    try:
        with pytest.raises(OSError, match="corrupt or incomplete gzip"):
            reader.read(0, len(content))
    finally:
        reader.close()


# --- short files ------------------------------------------------------------------------------


def test_short_file_identity_covers_what_there_is(tmp_path: Path) -> None:
    path = tmp_path / "abc-json.log"
    path.write_bytes(docker_file_of_size(300))
    head = head_of(path)
    assert len(head) == 300
    cp = checkpoint_of(path, offset=300)
    assert cp.head_len == 300
    assert cp.fingerprint == sha(path.read_bytes())


def test_growing_prefix_finds_the_checkpoint_taken_while_short(
    tmp_path: Path, store: CheckpointStore
) -> None:
    path = tmp_path / "abc-json.log"
    first = docker_file_of_size(300)
    path.write_bytes(first)
    store.set(checkpoint_of(path, offset=300))

    grown = first + docker_file_of_size(4700, start_ns=DEFAULT_START_NS + 10**9)
    with path.open("ab") as f:  # appended in place, as Docker does: same inode
        f.write(grown[300:])
    assert path.stat().st_size == 5000
    head = head_of(path)
    assert len(head) == HEAD_BYTES
    assert fingerprint(head) != fingerprint(first)  # the full identity moved on...

    found = find_for(store, path)  # ...and the 300-byte prefix still names the file
    assert found is not None
    assert found.head_len == 300
    assert found.offset == 300

    # Also by content alone, e.g. after a restart under another name and inode.
    copy = tmp_path / "copy.log"
    copy.write_bytes(path.read_bytes())
    found = find_for(store, copy)
    assert found is not None
    assert found.offset == 300


def test_longest_matching_identity_wins(tmp_path: Path, store: CheckpointStore) -> None:
    """A stale short entry and the current long one both match the file: the longer is the more
    specific identity (both at another inode and path, so only head_len ranks them)."""
    path = tmp_path / "abc-json.log"
    data = docker_file_of_size(5000)
    path.write_bytes(data)
    short = dataclasses.replace(
        checkpoint_of(path, offset=300, head=data[:300]), path="/x/1", inode=1
    )
    full = dataclasses.replace(checkpoint_of(path, offset=4000), path="/x/2", inode=2)
    store.set(short)
    store.set(full)
    found = find_for(store, path)
    assert found is not None
    assert found.offset == 4000


def test_file_shorter_than_one_line_has_an_identity(tmp_path: Path, store: CheckpointStore) -> None:
    path = tmp_path / "abc-json.log"
    line = encode_entry(b"hello\n", "stdout", DEFAULT_START_NS)
    path.write_bytes(line[:25])  # no newline yet
    head = head_of(path)
    assert head == line[:25]
    assert b"\n" not in head
    store.set(checkpoint_of(path, offset=0))

    with path.open("ab") as f:
        f.write(line[25:] + docker_lines(50))
    found = find_for(store, path)
    assert found is not None
    assert found.head_len == 25


def first_line_of(path: Path) -> bytes | None:
    reader = open_log(str(path))
    try:
        return reader.first_line()
    finally:
        reader.close()


def test_stable_id_is_the_first_line_and_does_not_change_as_the_file_grows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "abc-json.log"
    first_line = encode_entry(b"first\n", "stdout", DEFAULT_START_NS)
    path.write_bytes(first_line)
    ids = [stable_id(first_line_of(path))]
    assert ids[0] == sha(first_line)
    for n in (1, 5, 50):  # below, around and well past HEAD_BYTES
        with path.open("ab") as f:
            f.write(docker_lines(n, start_ns=DEFAULT_START_NS + n * 10**9))
        ids.append(stable_id(first_line_of(path)))
    assert len(head_of(path)) == HEAD_BYTES
    assert set(ids) == {sha(first_line)}


def test_a_first_line_longer_than_head_bytes_is_read_whole() -> None:
    """Its end holds Docker's nanosecond time: that is what tells two such files apart."""
    long_line = encode_entry(b"y" * 3000 + b"\n", "stdout", DEFAULT_START_NS)
    data = long_line + docker_lines(3)
    assert first_line(lambda offset, size: data[offset : offset + size]) == long_line


def test_an_unfinished_first_line_has_no_stable_id_yet() -> None:
    """Why the tailer gives a file a record fingerprint only once its first line is whole."""
    line = encode_entry(b"hello\n", "stdout", DEFAULT_START_NS)
    assert first_line(lambda offset, size: line[:30][offset : offset + size]) is None


def test_files_sharing_a_long_first_kib_are_told_apart_by_the_end_of_their_first_line() -> None:
    """A rotated file often starts with a middle part of a split line: 1 KiB of padding two
    files may share. The identity then takes in the end of that line, with its own time."""
    part = b"=" * 16_000
    one = encode_entry(part, "stdout", DEFAULT_START_NS) + docker_lines(2)
    two = encode_entry(part, "stdout", DEFAULT_START_NS + 1) + docker_lines(2)
    assert one[:HEAD_BYTES] == two[:HEAD_BYTES]
    ids = [identity_bytes(lambda o, n, d=d: d[o : o + n]) for d in (one, two)]
    assert all(len(i) == HEAD_BYTES + TAIL_BYTES for i in ids)
    assert fingerprint(ids[0]) != fingerprint(ids[1])


def test_empty_file_has_no_head(tmp_path: Path, store: CheckpointStore) -> None:
    path = tmp_path / "abc-json.log"
    path.write_bytes(b"")
    head = head_of(path)
    assert head == b""
    # Nothing to compare: no length of prefix exists, so no checkpoint can match...
    assert prefix_fingerprints(head)(1) is None
    other = tmp_path / "other.log"
    other.write_bytes(b"x")
    store.set(checkpoint_of(other, offset=0))
    assert find_for(store, path) is None
    # ...and an empty identity, which every file would match, cannot be recorded.
    with pytest.raises(ValueError, match="head_len"):
        store.set(checkpoint_of(path, offset=0))


def test_prefix_fingerprints_is_none_past_the_end() -> None:
    head = b"abcdef"
    of = prefix_fingerprints(head)
    assert of(3) == sha(b"abc")
    assert of(6) == sha(head)
    assert of(7) is None


def test_identity_is_the_first_kib_when_the_first_line_ends_inside_it() -> None:
    data = docker_lines(40)
    identity = identity_bytes(lambda offset, size: data[offset : offset + size])
    assert identity == data[:HEAD_BYTES]
    assert fingerprint(identity) == sha(data[:HEAD_BYTES])
