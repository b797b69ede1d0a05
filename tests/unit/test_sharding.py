"""Sharding files across worker processes: a stable owner per directory, and one checkpoint file
that several workers write without losing each other's entries."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.sharding import Shard, shard_of
from tests.unit.test_checkpoints import make_cp

ROOT = "/var/lib/docker/containers"


def container_dir(n: int) -> str:
    return f"{ROOT}/{n:064x}"


def directory_owned_by(index: int, count: int) -> str:
    """The first container directory of the test root that hashes to worker `index`."""
    return next(container_dir(n) for n in range(1000) if shard_of(container_dir(n), count) == index)


def test_every_directory_has_exactly_one_owner() -> None:
    for count in (1, 2, 3, 8):
        shards = [Shard(index, count) for index in range(count)]
        for n in range(200):
            owners = [shard.index for shard in shards if shard.owns_directory(container_dir(n))]
            assert owners == [shard_of(container_dir(n), count)]


def test_rotated_generations_stay_with_their_directory() -> None:
    shard = Shard(shard_of(container_dir(7), 2), 2)
    live = f"{container_dir(7)}/{7:064x}-json.log"
    assert shard.owns_path(live)
    assert shard.owns_path(live + ".1")
    assert shard.owns_path(live + ".2.gz")


def test_owner_is_the_same_in_another_interpreter() -> None:
    # hash() is salted per process; the owner must not be, or a restart would move files.
    script = (
        "from shipper.sharding import shard_of; "
        f"print([shard_of('{ROOT}/%064x' % n, 3) for n in range(50)])"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, text=True
    )
    assert other.stdout.strip() == str([shard_of(container_dir(n), 3) for n in range(50)])


def test_directories_spread_over_workers() -> None:
    counts = Counter(shard_of(container_dir(n), 4) for n in range(1000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 200  # 250 each on average


def test_one_shard_owns_everything() -> None:
    store = CheckpointStore(Path("/nonexistent/cp.json"), on_corrupt="fail", shard=Shard(0, 1))
    assert store.shard is None
    assert store.owns(container_dir(1)) and store.owns("/anything")


def _entry(directory: str, offset: int, tag: bytes) -> FileCheckpoint:
    name = directory.rsplit("/", 1)[1]
    return make_cp(tag * 40, path=f"{directory}/{name}-json.log", offset=offset)


def _files(path: Path) -> dict[str, int]:
    document = orjson.loads(path.read_bytes())
    return {entry["path"]: entry["offset"] for entry in document["files"]}


def test_workers_keep_each_others_entries(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    ours, theirs = directory_owned_by(0, 2), directory_owned_by(1, 2)
    first = CheckpointStore(path, on_corrupt="fail", shard=Shard(0, 2))
    second = CheckpointStore(path, on_corrupt="fail", shard=Shard(1, 2))
    first.load()
    second.load()
    first.set(_entry(ours, 10, b"a"))
    assert first.flush()
    second.set(_entry(theirs, 20, b"b"))
    assert second.flush()
    first.update_offset(first.entries()[0].key, 30)
    assert first.flush()
    on_disk = _files(path)
    assert on_disk == {
        f"{ours}/{ours.rsplit('/', 1)[1]}-json.log": 30,
        f"{theirs}/{theirs.rsplit('/', 1)[1]}-json.log": 20,
    }


def test_a_worker_loads_only_its_own_entries_and_removes_only_them(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    ours, theirs = directory_owned_by(0, 2), directory_owned_by(1, 2)
    single = CheckpointStore(path, on_corrupt="fail")
    single.load()
    single.set(_entry(ours, 1, b"a"))
    single.set(_entry(theirs, 2, b"b"))
    single.flush()

    worker = CheckpointStore(path, on_corrupt="fail", shard=Shard(0, 2))
    worker.load()
    assert [entry.path.startswith(ours) for entry in worker.entries()] == [True]
    worker.remove(worker.entries()[0].key)  # garbage collection of a file that is gone
    worker.flush()
    assert list(_files(path)) == [f"{theirs}/{theirs.rsplit('/', 1)[1]}-json.log"]

    # Back to one process: it sees every entry the workers left.
    single.load()
    assert [entry.offset for entry in single.entries()] == [2]


def test_the_supervisor_says_whether_it_is_a_first_start(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    other = CheckpointStore(path, on_corrupt="fail", shard=Shard(1, 2))
    other.load(first_start=True)
    other.set(_entry(directory_owned_by(1, 2), 5, b"b"))
    other.flush()
    late = CheckpointStore(path, on_corrupt="fail", shard=Shard(0, 2))
    late.load(first_start=True)  # the file exists now, written by the other worker
    assert late.first_start
    late.load(first_start=False)
    assert not late.first_start


def _flush_many(path: Path, index: int, rounds: int) -> None:
    store = CheckpointStore(path, on_corrupt="fail", shard=Shard(index, 2))
    store.load()
    directory = directory_owned_by(index, 2)
    store.set(_entry(directory, 0, b"ab"[index : index + 1]))
    key = store.entries()[0].key
    for offset in range(1, rounds + 1):
        store.update_offset(key, offset)
        store.flush()


def test_concurrent_flushes_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_flush_many, args=(path, index, 150)) for index in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    # Each worker's last flush kept the other's entry: both end at their last offset.
    assert sorted(_files(path).values()) == [150, 150]
