"""Tests for the CheckpointStore: durability, corruption handling and lookup by content identity."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.checkpoints import (
    MAX_HEAD_LEN,
    CheckpointKey,
    CheckpointStore,
    FileCheckpoint,
)
from shipper.errors import CheckpointCorruptError, CheckpointError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_cp(
    content: bytes = b"hello world\n",
    *,
    head_len: int | None = None,
    path: str = "/var/lib/docker/containers/abc/abc-json.log",
    device: int = 2049,
    inode: int = 100,
    offset: int = 0,
    source: str = "docker",
    updated_at: float = 1_700_000_000.0,
) -> FileCheckpoint:
    n = min(len(content), MAX_HEAD_LEN) if head_len is None else head_len
    return FileCheckpoint(
        fingerprint=sha(content[:n]),
        head_len=n,
        path=path,
        device=device,
        inode=inode,
        offset=offset,
        source=source,
        updated_at=updated_at,
    )


def head_of(content: bytes) -> tuple[Callable[[int], str | None], list[int]]:
    """A fingerprint_of callback for a file holding `content`, recording the lengths asked for."""
    calls: list[int] = []

    def fingerprint_of(n: int) -> str | None:
        calls.append(n)
        return sha(content[:n]) if len(content) >= n else None

    return fingerprint_of, calls


def valid_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fingerprint": sha(b"x"),
        "head_len": 1,
        "path": "/logs/a.log",
        "device": 1,
        "inode": 2,
        "offset": 3,
        "source": "docker",
        "updated_at": 1.5,
    }
    entry.update(overrides)
    return entry


@pytest.fixture
def cp_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "checkpoints.json"


def loaded(path: Path, on_corrupt: str = "fail") -> CheckpointStore:
    store = CheckpointStore(path, on_corrupt=on_corrupt)  # type: ignore[arg-type]
    store.load()
    return store


# -- round trip and first start -----------------------------------------------------------------


def test_round_trip(cp_path: Path) -> None:
    store = loaded(cp_path)
    a = make_cp(b"a" * 2000, offset=12345, inode=1)
    b = make_cp(b"short", offset=5, inode=2, path="/logs/b.log", source="sidecar")
    store.set(a)
    store.set(b)
    assert store.flush() is True

    again = loaded(cp_path)
    assert again.first_start is False
    assert sorted(again.entries(), key=lambda cp: cp.inode) == [a, b]
    assert again.get(a.key) == a
    assert again.get((b.fingerprint, b.head_len)) == b
    assert a.head_len == MAX_HEAD_LEN

    doc = orjson.loads(cp_path.read_bytes())
    assert doc["version"] == 1
    assert doc["written_at"].endswith("Z")
    assert {f["inode"] for f in doc["files"]} == {1, 2}
    # Human-readable: indented, one field per line.
    assert b'\n  "files": [\n' in cp_path.read_bytes()


def test_missing_file_is_first_start(cp_path: Path) -> None:
    store = loaded(cp_path)
    assert store.first_start is True
    assert store.entries() == []
    assert store.set_aside_path is None


def test_empty_list_is_not_first_start(cp_path: Path) -> None:
    store = loaded(cp_path)
    store.set(make_cp())
    store.flush()
    store.remove(make_cp().key)
    assert store.flush() is True

    again = loaded(cp_path)
    assert again.first_start is False
    assert again.entries() == []


def test_hand_written_minimal_file_loads(cp_path: Path) -> None:
    cp_path.parent.mkdir()
    cp_path.write_bytes(b'{"version": 1, "files": []}')
    store = loaded(cp_path)
    assert store.first_start is False
    assert len(store) == 0


def test_load_replaces_previous_contents(cp_path: Path) -> None:
    store = loaded(cp_path)
    store.set(make_cp())
    store.load()
    assert store.entries() == []
    assert store.first_start is True


# -- atomic, durable writes ------------------------------------------------------------------------


def test_flush_leaves_no_tmp_and_valid_content(cp_path: Path) -> None:
    store = loaded(cp_path)
    store.set(make_cp(offset=7))
    store.flush()
    assert not cp_path.with_name("checkpoints.json.tmp").exists()
    assert [f["offset"] for f in orjson.loads(cp_path.read_bytes())["files"]] == [7]


def test_crash_before_rename_keeps_main_file(cp_path: Path) -> None:
    store = loaded(cp_path)
    cp = make_cp(offset=100)
    store.set(cp)
    store.flush()
    # A crash after writing the next state to .tmp but before the rename.
    tmp = cp_path.with_name("checkpoints.json.tmp")
    tmp.write_bytes(b'{"version": 1, "files": [{"trunc')
    tmp.chmod(0o644)

    again = loaded(cp_path)
    assert again.entries() == [cp]

    # The next flush overwrites the stale .tmp and still produces a 0600 file.
    again.update_offset(cp.key, 200)
    assert again.flush() is True
    assert not tmp.exists()
    assert loaded(cp_path).entries()[0].offset == 200
    assert stat.S_IMODE(cp_path.stat().st_mode) == 0o600


def test_flush_skipped_when_unchanged(cp_path: Path) -> None:
    store = loaded(cp_path)
    assert store.flush() is False  # nothing loaded, nothing changed: no file written
    assert not cp_path.exists()

    cp = make_cp(offset=10)
    store.set(cp)
    assert store.dirty is True
    assert store.flush() is True
    assert store.flush() is False

    store.set(cp)  # the same entry again is not a change
    store.update_offset(cp.key, 10)  # nor is the same offset
    assert store.flush() is False

    store.update_offset(cp.key, 11)
    assert store.flush() is True

    assert loaded(cp_path).flush() is False


def test_file_and_directory_permissions(cp_path: Path) -> None:
    store = loaded(cp_path)
    store.set(make_cp())
    store.flush()
    assert stat.S_IMODE(cp_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cp_path.parent.stat().st_mode) == 0o700


def test_write_error_names_file_and_stays_dirty(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    path = blocker / "checkpoints.json"
    store = CheckpointStore(path, on_corrupt="fail")
    store.set(make_cp())
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint file .*checkpoints\.json"):
        store.flush()
    assert store.dirty is True


# -- corrupt and unreadable files ------------------------------------------------------------------

CORRUPT_FILES: dict[str, bytes] = {
    "garbage": b"\x00\xff\xfegarbage{{",
    "empty": b"",
    "not an object": b"[1, 2]",
    "wrong version": orjson.dumps({"version": 2, "files": []}),
    "no version": orjson.dumps({"files": []}),
    "files not a list": orjson.dumps({"version": 1, "files": {}}),
    "missing field": orjson.dumps(
        {"version": 1, "files": [{k: v for k, v in valid_entry().items() if k != "inode"}]}
    ),
    "negative offset": orjson.dumps({"version": 1, "files": [valid_entry(offset=-1)]}),
    "string offset": orjson.dumps({"version": 1, "files": [valid_entry(offset="12")]}),
    "bool offset": orjson.dumps({"version": 1, "files": [valid_entry(offset=True)]}),
    "bad fingerprint": orjson.dumps({"version": 1, "files": [valid_entry(fingerprint="xyz")]}),
    "head_len too long": orjson.dumps({"version": 1, "files": [valid_entry(head_len=4096)]}),
    "duplicate": orjson.dumps({"version": 1, "files": [valid_entry(), valid_entry()]}),
}


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_with_fail_raises_and_leaves_file(cp_path: Path, content: bytes) -> None:
    cp_path.parent.mkdir()
    cp_path.write_bytes(content)
    store = CheckpointStore(cp_path, on_corrupt="fail")
    with pytest.raises(CheckpointCorruptError) as excinfo:
        store.load()
    message = str(excinfo.value)
    assert str(cp_path) in message
    assert "refusing to start" in message
    assert "on_corrupt: reset" in message
    assert cp_path.read_bytes() == content
    assert sorted(p.name for p in cp_path.parent.iterdir()) == ["checkpoints.json"]


def test_corrupt_message_says_what_is_wrong(cp_path: Path) -> None:
    cp_path.parent.mkdir()
    cp_path.write_bytes(
        orjson.dumps({"version": 1, "files": [valid_entry(), valid_entry(offset="x")]})
    )
    with pytest.raises(CheckpointCorruptError, match=r"files\[1\]: offset must be an integer"):
        loaded(cp_path)


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_with_reset_sets_file_aside(cp_path: Path, content: bytes) -> None:
    cp_path.parent.mkdir()
    cp_path.write_bytes(content)
    store = loaded(cp_path, on_corrupt="reset")

    assert store.entries() == []
    # Not a first start: `start_at: end` must not skip lines shipper may never have shipped.
    assert store.first_start is False
    aside = store.set_aside_path
    assert aside is not None
    assert aside.name.startswith("checkpoints.json.corrupt-")
    assert aside.read_bytes() == content
    assert store.corrupt_reason
    # An empty store is written at once, so a crash now is not mistaken for a first start later.
    again = loaded(cp_path)
    assert again.first_start is False
    assert again.entries() == []


def test_reset_twice_keeps_both_copies(cp_path: Path) -> None:
    cp_path.parent.mkdir()
    cp_path.write_bytes(b"first")
    first = loaded(cp_path, on_corrupt="reset").set_aside_path
    cp_path.write_bytes(b"second")
    second = loaded(cp_path, on_corrupt="reset").set_aside_path
    assert first is not None
    assert second is not None
    assert first != second
    assert first.read_bytes() == b"first"
    assert second.read_bytes() == b"second"


def test_unreadable_file_names_it(cp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cp_path.parent.mkdir()
    cp_path.write_bytes(b'{"version": 1, "files": []}')

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    # Tests may run as root, which chmod 000 does not stop: simulate the OS refusing instead.
    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint file .*Permission denied"
    ) as e:
        loaded(cp_path, on_corrupt="reset")
    assert not isinstance(e.value, CheckpointCorruptError)
    assert str(cp_path) in str(e.value)


def test_directory_in_place_of_file(cp_path: Path) -> None:
    cp_path.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=str(cp_path)):
        loaded(cp_path)


# -- find by content identity ----------------------------------------------------------------------


def test_find_by_content_after_rename_and_copy(cp_path: Path) -> None:
    content = b'{"log":"line\\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}\n' * 40
    store = loaded(cp_path)
    cp = make_cp(content, path="/logs/a.log", inode=100, offset=500)
    store.set(cp)

    # Copied (new inode, new path): still the same content, found by fingerprint alone.
    fingerprint_of, calls = head_of(content + b"more")
    found = store.find(fingerprint_of, path="/logs/a.log.1", device=2049, inode=999)
    assert found == cp
    assert calls == [MAX_HEAD_LEN]

    # Same inode but different content (inode reuse): not the same file.
    fingerprint_of, _ = head_of(b"x" * 2000)
    assert store.find(fingerprint_of, path="/logs/a.log", device=2049, inode=100) is None


def test_find_prefers_inode_match_when_content_prefix_shared(cp_path: Path) -> None:
    store = loaded(cp_path)
    # The short entry's whole content is a prefix of the long one's head.
    short = make_cp(b"hello", path="/logs/short.log", inode=1)
    long = make_cp(b"hello world", path="/logs/long.log", inode=2)
    store.set(short)
    store.set(long)

    fingerprint_of, calls = head_of(b"hello world and more")
    assert store.find(fingerprint_of, path="/x", device=2049, inode=1) == short
    assert calls == [5, 11]  # once per distinct head_len, shortest first
    fingerprint_of, _ = head_of(b"hello world and more")
    assert store.find(fingerprint_of, path="/x", device=2049, inode=2) == long
    # No inode or path match: the longest (most specific) identity wins.
    fingerprint_of, _ = head_of(b"hello world and more")
    assert store.find(fingerprint_of, path="/x", device=2049, inode=3) == long
    # A path match beats a longer identity when no inode matches.
    fingerprint_of, _ = head_of(b"hello world and more")
    assert store.find(fingerprint_of, path="/logs/short.log", device=2049, inode=3) == short
    # A different device is not an inode match.
    fingerprint_of, _ = head_of(b"hello world and more")
    assert store.find(fingerprint_of, path="/x", device=7, inode=1) == long


def test_find_calls_callback_once_per_head_len_and_stops_when_file_too_short(
    cp_path: Path,
) -> None:
    store = loaded(cp_path)
    for i in range(5):
        store.set(make_cp(f"{i}".encode() * 2000, inode=i))  # five entries, one head_len
    store.set(make_cp(b"abc", inode=10))
    store.set(make_cp(b"abcdefgh", inode=11))

    fingerprint_of, calls = head_of(b"abcd")
    found = store.find(fingerprint_of, path="/x", device=0, inode=0)
    assert found is not None
    assert found.inode == 10
    assert calls == [3, 8]  # 8 returned None: 1024 is never asked for

    fingerprint_of, calls = head_of(b"3" * 1500)
    found = store.find(fingerprint_of, path="/x", device=0, inode=0)
    assert found is not None
    assert found.inode == 3
    assert calls == [3, 8, MAX_HEAD_LEN]


def test_find_on_empty_store_does_not_hash(cp_path: Path) -> None:
    store = loaded(cp_path)
    fingerprint_of, calls = head_of(b"abc")
    assert store.find(fingerprint_of, path="/x", device=0, inode=0) is None
    assert calls == []


# -- changes ---------------------------------------------------------------------------------------


def test_rekey_when_short_file_grows(cp_path: Path) -> None:
    now = [1000.0]
    store = CheckpointStore(cp_path, on_corrupt="fail", clock=lambda: now[0])
    store.load()
    short = make_cp(b"partial", offset=7)
    store.set(short)
    store.flush()

    grown = make_cp(b"partial line, now longer\n", offset=7)
    store.rekey(short.key, grown)
    assert store.get(short.key) is None
    assert store.get(grown.key) == grown
    assert store.flush() is True

    again = loaded(cp_path)
    assert again.entries() == [grown]
    # The old head_len group is gone: find asks only for the new length.
    fingerprint_of, calls = head_of(b"partial line, now longer\nand more")
    assert again.find(fingerprint_of, path="/x", device=0, inode=0) == grown
    assert calls == [grown.head_len]


def test_rekey_rejects_unknown_key_and_shorter_head(cp_path: Path) -> None:
    store = loaded(cp_path)
    with pytest.raises(KeyError):
        store.rekey(CheckpointKey(sha(b"nope"), 4), make_cp())
    long = make_cp(b"0123456789")
    store.set(long)
    with pytest.raises(ValueError, match="lengthen"):
        store.rekey(long.key, make_cp(b"01234"))
    assert store.entries() == [long]


def test_update_offset(cp_path: Path) -> None:
    now = [2000.0]
    store = CheckpointStore(cp_path, on_corrupt="fail", clock=lambda: now[0])
    store.load()
    cp = make_cp(offset=0, updated_at=1.0)
    store.set(cp)
    store.flush()

    updated = store.update_offset(cp.key, 64, path="/logs/renamed.log")
    assert (updated.offset, updated.path, updated.updated_at) == (64, "/logs/renamed.log", 2000.0)
    assert store.get(cp.key) == updated

    now[0] = 3000.0
    store.flush()
    only_path = store.update_offset(cp.key, 64, path="/logs/again.log")
    assert only_path.updated_at == 2000.0  # updated_at follows the offset, not the path
    assert store.flush() is True

    with pytest.raises(ValueError, match="non-negative"):
        store.update_offset(cp.key, -1)
    with pytest.raises(KeyError):
        store.update_offset((sha(b"unknown"), 7), 1)


def test_set_replaces_same_identity_and_validates(cp_path: Path) -> None:
    store = loaded(cp_path)
    store.set(make_cp(offset=1))
    store.set(make_cp(offset=2, inode=5))
    assert [cp.offset for cp in store.entries()] == [2]
    with pytest.raises(ValueError, match="head_len"):
        store.set(make_cp(b"", head_len=0))
    with pytest.raises(ValueError, match="fingerprint"):
        store.set(FileCheckpoint("ABC", 3, "/p", 0, 0, 0, "docker", 0.0))


def test_remove(cp_path: Path) -> None:
    store = loaded(cp_path)
    cp = make_cp()
    store.set(cp)
    store.flush()
    assert store.remove(cp.key) is True
    assert store.remove(cp.key) is False
    assert store.flush() is True
    assert loaded(cp_path).entries() == []
    fingerprint_of, calls = head_of(b"hello world\n")
    assert store.find(fingerprint_of, path="/x", device=0, inode=0) is None
    assert calls == []


def test_entries_are_immutable(cp_path: Path) -> None:
    store = loaded(cp_path)
    store.set(make_cp())
    with pytest.raises(AttributeError):
        store.entries()[0].offset = 5  # type: ignore[misc]


def test_stale_longer_tmp_is_truncated_and_mode_fixed(cp_path: Path) -> None:
    cp_path.parent.mkdir(mode=0o700)
    tmp = cp_path.with_name("checkpoints.json.tmp")
    tmp.write_bytes(b"junk" * 1000)
    tmp.chmod(0o644)
    store = loaded(cp_path)
    store.set(make_cp())
    store.flush()
    assert stat.S_IMODE(cp_path.stat().st_mode) == 0o600
    assert len(loaded(cp_path).entries()) == 1
