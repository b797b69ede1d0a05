"""Tests for the rotation schemes (shipper.sources.rotation): which names are generations, in order.

Besides fixed listings, each scheme is driven through a simulation of its writer that records
which content every name holds; every listing the writer can leave behind, mid-compression
included, must give each content exactly once (the plain file while its gzip is unfinished),
oldest first.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from shipper.sources.rotation import (
    DockerRotation,
    KubeletRotation,
    LogrotateRotation,
    Rotation,
    logrotate_live_name,
)

DOCKER_BASE = "4f7c" * 16 + "-json.log"


def names_of(generations: list[tuple[int, str]]) -> list[str]:
    return [name for _, name in generations]


def ages_of(generations: list[tuple[int, str]]) -> list[int]:
    return [age for age, _ in generations]


def assert_any_order(rotation: Rotation, names: list[str], expected: list[tuple[int, str]]) -> None:
    """The result does not depend on the order os.listdir happens to give."""
    for permutation in itertools.permutations(names):
        assert rotation.generations(permutation) == expected, permutation


# --- Docker -------------------------------------------------------------------------------------


def test_docker_container_directory() -> None:
    base = DOCKER_BASE
    listing = [
        "checkpoints",
        "config.v2.json",
        "hostconfig.json",
        "hostname",
        "hosts",
        "mounts",
        "resolv.conf",
        "resolv.conf.hash",
        f"{base}.3.gz",
        f"{base}.1",
        base,
        f"{base}.2.gz",
    ]
    assert DockerRotation(base).generations(listing) == [
        (3, f"{base}.3.gz"),
        (2, f"{base}.2.gz"),
        (1, f"{base}.1"),
        (0, base),
    ]


def test_docker_numbers_compare_as_numbers() -> None:
    base = DOCKER_BASE
    listing = [base] + [f"{base}.{n}" for n in range(1, 12)]
    generations = DockerRotation(base).generations(listing)
    assert ages_of(generations) == list(range(11, -1, -1))  # "10" < "9" as text: not here


def test_docker_plain_twin_wins_over_its_unfinished_gzip() -> None:
    base = DOCKER_BASE
    listing = [base, f"{base}.1", f"{base}.1.gz", f"{base}.2.gz"]
    assert_any_order(
        DockerRotation(base), listing, [(2, f"{base}.2.gz"), (1, f"{base}.1"), (0, base)]
    )


def test_docker_without_live_file() -> None:
    base = DOCKER_BASE
    assert DockerRotation(base).generations([f"{base}.1.gz"]) == [(1, f"{base}.1.gz")]
    assert DockerRotation(base).generations([]) == []


@pytest.mark.parametrize(
    "suffix",
    [".0", ".01", ".1.tmp", ".1.gz.tmp", ".gz", ".1.bz2", ".x", "1", ".1.", ".-1", ".1.GZ"],
)
def test_docker_names_it_never_writes_are_not_generations(suffix: str) -> None:
    base = DOCKER_BASE
    assert DockerRotation(base).generations([base, base + suffix]) == [(0, base)]


def test_docker_other_containers_files_are_not_generations() -> None:
    base = DOCKER_BASE
    other = "9" * 64 + "-json.log"
    listing = [base, other, f"{other}.1"]
    assert DockerRotation(base).generations(listing) == [(0, base)]


# --- kubelet ------------------------------------------------------------------------------------


def test_kubelet_rotated_files_in_timestamp_order() -> None:
    # What the kubelet leaves with containerLogMaxFiles=5 after a few rotations: every rotated
    # file compressed but the newest.
    listing = [
        "0.log.20240101-131500",
        "0.log",
        "0.log.20240101-120000.gz",
        "0.log.20231231-235959.gz",
        "0.log.20240101-100000.gz",
    ]
    assert KubeletRotation("0.log").generations(listing) == [
        (4, "0.log.20231231-235959.gz"),
        (3, "0.log.20240101-100000.gz"),
        (2, "0.log.20240101-120000.gz"),
        (1, "0.log.20240101-131500"),
        (0, "0.log"),
    ]


def test_kubelet_compression_in_progress() -> None:
    listing = [
        "0.log",
        "0.log.20240101-120000",
        "0.log.20240101-120000.tmp",  # the gzip being written
        "0.log.20240101-121000",
    ]
    assert_any_order(
        KubeletRotation("0.log"),
        listing,
        [(2, "0.log.20240101-120000"), (1, "0.log.20240101-121000"), (0, "0.log")],
    )
    # Renamed to .gz but the plain file not yet deleted: still the plain one.
    listing = ["0.log", "0.log.20240101-120000", "0.log.20240101-120000.gz"]
    assert_any_order(
        KubeletRotation("0.log"), listing, [(1, "0.log.20240101-120000"), (0, "0.log")]
    )


def test_kubelet_restart_counts_are_separate_files() -> None:
    listing = [
        "0.log",
        "0.log.20240101-120000.gz",
        "1.log",
        "1.log.20240102-120000",
        "10.log",
        "11.log.20240103-120000",
    ]
    assert names_of(KubeletRotation("1.log").generations(listing)) == [
        "1.log.20240102-120000",
        "1.log",
    ]
    assert names_of(KubeletRotation("0.log").generations(listing)) == [
        "0.log.20240101-120000.gz",
        "0.log",
    ]
    assert names_of(KubeletRotation("10.log").generations(listing)) == ["10.log"]


@pytest.mark.parametrize(
    "name",
    [
        "0.log.20240101-120000.tmp",
        "0.log.20240101-120000.gz.tmp",
        "0.log.20240101-1200",
        "0.log.20240101120000",
        "0.log.2024-01-01-120000",
        "0.log.1",
        "0.log.bak",
        "0.log.20240101-120000.zst",
    ],
)
def test_kubelet_foreign_names_are_not_generations(name: str) -> None:
    assert KubeletRotation("0.log").generations(["0.log", name]) == [(0, "0.log")]


# --- logrotate and Python logging ---------------------------------------------------------------


def test_logrotate_numbered_with_compression() -> None:
    listing = ["app.log", "app.log.1", "app.log.2.gz", "app.log.3.gz", "app.log.10.gz"]
    assert LogrotateRotation("app.log").generations(listing) == [
        (4, "app.log.10.gz"),
        (3, "app.log.3.gz"),
        (2, "app.log.2.gz"),
        (1, "app.log.1"),
        (0, "app.log"),
    ]


def test_logrotate_start_zero() -> None:
    # logrotate's `start 0` numbers the newest rotated file .0
    listing = ["app.log.1.gz", "app.log", "app.log.0"]
    assert LogrotateRotation("app.log").generations(listing) == [
        (2, "app.log.1.gz"),
        (1, "app.log.0"),
        (0, "app.log"),
    ]


def test_logrotate_dateext_across_month_and_year() -> None:
    listing = [
        "app.log",
        "app.log-20240201",
        "app.log-20240131.gz",
        "app.log-20231231.gz",
        "app.log-20240101.gz",
    ]
    assert names_of(LogrotateRotation("app.log").generations(listing)) == [
        "app.log-20231231.gz",
        "app.log-20240101.gz",
        "app.log-20240131.gz",
        "app.log-20240201",
        "app.log",
    ]


def test_logrotate_dateext_with_hours_and_epoch_seconds() -> None:
    hourly = ["app.log-2024010123", "app.log-2024010200", "app.log-2024010109"]
    assert names_of(LogrotateRotation("app.log").generations(hourly)) == [
        "app.log-2024010109",
        "app.log-2024010123",
        "app.log-2024010200",
    ]
    # `dateformat -%Y%m%d-%s`: several rotations a day, told apart by epoch seconds.
    epoch = ["app.log-20240101-1704099600.gz", "app.log-20240101-1704070800.gz", "app.log"]
    assert names_of(LogrotateRotation("app.log").generations(epoch)) == [
        "app.log-20240101-1704070800.gz",
        "app.log-20240101-1704099600.gz",
        "app.log",
    ]


def test_timed_rotating_file_handler_suffixes() -> None:
    daily = ["app.log.2024-01-02", "app.log", "app.log.2023-12-31", "app.log.2024-01-01"]
    assert names_of(LogrotateRotation("app.log").generations(daily)) == [
        "app.log.2023-12-31",
        "app.log.2024-01-01",
        "app.log.2024-01-02",
        "app.log",
    ]
    # when="S": "%Y-%m-%d_%H-%M-%S"
    seconds = ["app.log.2024-01-01_10-00-09", "app.log.2024-01-01_09-59-59", "app.log"]
    assert names_of(LogrotateRotation("app.log").generations(seconds)) == [
        "app.log.2024-01-01_09-59-59",
        "app.log.2024-01-01_10-00-09",
        "app.log",
    ]


def test_a_date_written_with_a_dot_is_a_date_not_a_number() -> None:
    # `dateformat .%Y%m%d`: read as numbers, the newest would sort as the oldest.
    listing = ["app.log.20240102", "app.log.20240101", "app.log"]
    assert LogrotateRotation("app.log").generations(listing) == [
        (2, "app.log.20240101"),
        (1, "app.log.20240102"),
        (0, "app.log"),
    ]


def test_logrotate_gzip_being_written_is_left_out() -> None:
    # logrotate runs gzip into app.log.1.gz and deletes app.log.1 when it is done.
    listing = ["app.log", "app.log.1", "app.log.1.gz", "app.log-20240101", "app.log-20240101.gz"]
    assert_any_order(
        LogrotateRotation("app.log"),
        listing,
        [(2, "app.log.1"), (1, "app.log-20240101"), (0, "app.log")],
    )


def test_left_behind_numbered_files_are_older_than_dated_ones() -> None:
    listing = ["app.log", "app.log-20240105", "app.log.1.gz", "app.log-20240104.gz", "app.log.2.gz"]
    assert names_of(LogrotateRotation("app.log").generations(listing)) == [
        "app.log.2.gz",
        "app.log.1.gz",
        "app.log-20240104.gz",
        "app.log-20240105",
        "app.log",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "app.log.bak",
        "app.log.swp",
        "app.log.old",
        "app.log~",
        "app.log.1.tmp",
        "app.log.1.bz2",
        "app.log-20240101.xz",
        "app.log-backup",
        "app.logger",
        "app.log2",
        "app.log.20241301",  # no month 13, and too long for a number
        "app.log.20240132",
        "app.log.1234567",
        "app.log.01",
        "app.log-1",
        "app.log.2024-0101",  # one dash: neither style
        "app.log.2024-01-01.1",
        "app.log.1.gz.gz",
    ],
)
def test_logrotate_foreign_names_are_not_generations(name: str) -> None:
    assert LogrotateRotation("app.log").generations(["app.log", name]) == [(0, "app.log")]


def test_logrotate_base_without_extension() -> None:
    listing = ["app", "app.1", "app-20240101", "app.log", "app.log.1", "apple"]
    assert names_of(LogrotateRotation("app").generations(listing)) == [
        "app.1",
        "app-20240101",
        "app",
    ]


# --- writers simulated step by step -------------------------------------------------------------


class Directory:
    """File names and the content (an int: larger is newer) each holds, changed as a writer
    changes them; `listings` keeps every state a directory listing could see."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.files: dict[str, int] = {base: 0}
        self.written = 0
        self.listings: list[dict[str, int]] = [dict(self.files)]

    def _seen(self) -> None:
        self.listings.append(dict(self.files))

    def new_live(self) -> None:
        self.written += 1
        self.files[self.base] = self.written
        self._seen()

    def rename(self, old: str, new: str) -> None:
        self.files[new] = self.files.pop(old)
        self._seen()

    def remove(self, name: str) -> None:
        del self.files[name]
        self._seen()

    def gzip(self, name: str, temporary: str | None) -> None:
        """Compress `name` as writers do: into a temporary name renamed when done, or straight
        into `name.gz` (whose content is unfinished until `name` is deleted)."""
        if temporary is None:
            self.files[name + ".gz"] = -1  # unfinished: must never be listed
            self._seen()
        else:
            self.files[temporary] = -1
            self._seen()
            self.rename(temporary, name + ".gz")
        self.files[name + ".gz"] = self.files[name]
        self._seen()
        self.remove(name)


def check_listings(directory: Directory, rotation: Rotation) -> None:
    for files in directory.listings:
        names = list(files)
        random.Random(len(names)).shuffle(names)
        generations = rotation.generations(names)
        contents = [files[name] for _, name in generations]
        assert -1 not in contents, (files, generations)  # an unfinished file was listed
        assert contents == sorted(set(files.values()) - {-1}), (files, generations)
        ages = ages_of(generations)
        assert ages == sorted(ages, reverse=True)
        assert len(set(ages)) == len(ages)
        if directory.base in files:
            assert generations[-1] == (0, directory.base)


def docker_rotate(directory: Directory, max_file: int) -> None:
    base = directory.base
    oldest = f"{base}.{max_file - 1}"
    for name in (oldest, oldest + ".gz"):
        if name in directory.files:
            directory.remove(name)
    for n in range(max_file - 2, 0, -1):
        for suffix in ("", ".gz"):
            if f"{base}.{n}{suffix}" in directory.files:
                directory.rename(f"{base}.{n}{suffix}", f"{base}.{n + 1}{suffix}")
    directory.rename(base, f"{base}.1")
    directory.new_live()
    directory.gzip(f"{base}.1", temporary=None)


def kubelet_rotate(directory: Directory, max_files: int, stamp: str) -> None:
    base = directory.base
    rotated = sorted(name for name in directory.files if name != base)
    for name in rotated[: max(0, len(rotated) - (max_files - 2))]:
        directory.remove(name)
    for name in sorted(name for name in directory.files if name != base):
        if not name.endswith(".gz"):
            directory.gzip(name, temporary=name + ".tmp")
    directory.rename(base, f"{base}.{stamp}")
    directory.new_live()


def logrotate_rotate(directory: Directory, keep: int, delay_compress: bool) -> None:
    base = directory.base
    for suffix in ("", ".gz"):
        if f"{base}.{keep}{suffix}" in directory.files:
            directory.remove(f"{base}.{keep}{suffix}")
    for n in range(keep - 1, 0, -1):
        for suffix in ("", ".gz"):
            if f"{base}.{n}{suffix}" in directory.files:
                directory.rename(f"{base}.{n}{suffix}", f"{base}.{n + 1}{suffix}")
    directory.rename(base, f"{base}.1")
    directory.new_live()
    if delay_compress:
        if f"{base}.2" in directory.files:
            directory.gzip(f"{base}.2", temporary=None)
    else:
        directory.gzip(f"{base}.1", temporary=None)


def dateext_rotate(directory: Directory, keep: int, day: int) -> None:
    base = directory.base
    dated = sorted(name for name in directory.files if name != base)
    for name in dated[: max(0, len(dated) - keep + 1)]:
        directory.remove(name)
    rotated = f"{base}-202401{day:02d}"
    directory.rename(base, rotated)
    directory.new_live()
    directory.gzip(rotated, temporary=None)


@pytest.mark.parametrize(
    ("base", "rotation", "rotate"),
    [
        (DOCKER_BASE, DockerRotation, lambda d, i: docker_rotate(d, max_file=4)),
        (
            "0.log",
            KubeletRotation,
            lambda d, i: kubelet_rotate(d, max_files=5, stamp=f"20240101-{10 + i:02d}0000"),
        ),
        ("app.log", LogrotateRotation, lambda d, i: logrotate_rotate(d, 4, delay_compress=False)),
        ("app.log", LogrotateRotation, lambda d, i: logrotate_rotate(d, 4, delay_compress=True)),
        ("app.log", LogrotateRotation, lambda d, i: dateext_rotate(d, keep=3, day=1 + i)),
    ],
    ids=["docker", "kubelet", "logrotate", "logrotate-delaycompress", "logrotate-dateext"],
)
def test_every_state_a_writer_leaves_lists_each_content_once_in_order(
    base: str,
    rotation: Callable[[str], Rotation],
    rotate: Callable[[Directory, int], None],
) -> None:
    directory = Directory(base)
    for i in range(8):
        rotate(directory, i)
    assert len(directory.listings) > 30
    assert len(directory.files) > 2  # the writer kept several generations
    check_listings(directory, rotation(base))


@pytest.mark.parametrize(
    ("name", "live"),
    [
        ("app.log.1", "app.log"),
        ("app.log.2.gz", "app.log"),
        ("app.log-20240101", "app.log"),
        ("app.log-20240101.gz", "app.log"),
        ("app.log.2024-01-01", "app.log"),
        ("app.log", None),
        ("app.log.bak", None),
        ("notes.txt", None),
    ],
)
def test_logrotate_live_name_finds_the_file_a_generation_belongs_to(
    name: str, live: str | None
) -> None:
    assert logrotate_live_name(name) == live
