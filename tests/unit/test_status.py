"""`shipper status` in-process: naming each file's container, finding rotated files, the table."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import orjson
import pytest

from shipper.checkpoints import CheckpointStore, FileCheckpoint
from shipper.config import parse_config
from shipper.sources.identity import fingerprint
from shipper.status import file_statuses, render_table, show_status

POD = "default_web-7d4b9c_0f0e0d0c-0b0a-0908-0706-050403020100"


def config_text(tmp: Path) -> str:
    return f"""
state_dir: {tmp / "state"}
sources:
  pods:
    type: cri
    root: {tmp / "pods"}
  app:
    type: files
    paths: ["{tmp / "logs"}/*.log"]
outputs:
  out:
    type: file
    path: {tmp / "out.ndjson"}
"""


def checkpoint(
    path: Path, source: str, offset: int, *, content: bytes | None = None
) -> FileCheckpoint:
    stat = path.stat()
    head = (content if content is not None else path.read_bytes())[:1024]
    return FileCheckpoint(
        fingerprint=fingerprint(head),
        head_len=len(head),
        path=str(path),
        device=stat.st_dev,
        inode=stat.st_ino,
        offset=offset,
        source=source,
        updated_at=time.time() - 90,
        size=offset,
    )


def test_names_and_lags_of_cri_and_plain_files(tmp_path: Path) -> None:
    container = tmp_path / "pods" / POD / "nginx"
    container.mkdir(parents=True)
    live = container / "0.log"
    live.write_bytes(b"2024-01-01T00:00:00Z stdout F hello\n" * 10)
    rotated = container / "1.log.20240101-120000.gz"
    rotated.write_bytes(gzip.compress(b"2024-01-01T00:00:00Z stdout F old\n" * 4))
    (tmp_path / "logs").mkdir()
    app = tmp_path / "logs" / "app.log.1"
    app.write_bytes(b"one\ntwo\n")
    config = parse_config(config_text(tmp_path), origin="<test>")
    old = b"2024-01-01T00:00:00Z stdout F old\n" * 4
    entries = [
        checkpoint(live, "pods", 100),
        checkpoint(rotated, "pods", len(old), content=old),
        checkpoint(app, "app", 4),
        checkpoint(app, "removed-source", 8),
    ]

    statuses = {(s.source, s.path): s for s in file_statuses(entries, config)}

    pod = statuses[("pods", str(live))]
    assert pod.container == "default/web-7d4b9c/nginx"
    assert (pod.size, pod.lag, pod.state) == (360, 260, "current")
    gz = statuses[("pods", str(rotated))]
    assert gz.container == "default/web-7d4b9c/nginx"  # a rotated generation's name, too
    assert (gz.size, gz.lag) == (len(old), 0)  # content bytes, not the .gz's size on disk
    plain = statuses[("app", str(app))]
    assert (plain.container, plain.type, plain.lag) == ("app.log", "files", 4)
    unknown = statuses[("removed-source", str(app))]
    assert (unknown.container, unknown.type) == ("", "")


def test_a_file_renamed_or_replaced_since_its_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    live = tmp_path / "logs" / "app.log"
    live.write_bytes(b"first line\n" * 20)
    entry = checkpoint(live, "app", 110)
    config = parse_config(config_text(tmp_path), origin="<test>")
    os.rename(live, f"{live}.1")  # rotated by rename
    live.write_bytes(b"a new file\n")

    [renamed] = file_statuses([entry], config)

    assert renamed.state == "rotated"
    assert renamed.current_path == f"{live}.1"
    assert (renamed.size, renamed.lag) == (220, 110)

    # Compressed since: a new inode, found by its content.
    Path(f"{live}.1.gz").write_bytes(gzip.compress(Path(f"{live}.1").read_bytes()))
    os.remove(f"{live}.1")
    [compressed] = file_statuses([entry], config)
    assert (compressed.state, compressed.current_path) == ("rotated", f"{live}.1.gz")
    assert compressed.lag == 110

    # Deleted: gone, with the lag the checkpoint knew.
    os.remove(f"{live}.1.gz")
    [gone] = file_statuses([entry], config)
    assert (gone.state, gone.size, gone.current_path, gone.lag) == ("gone", None, None, 0)


def test_a_reused_inode_is_not_taken_for_the_checkpointed_file(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    live = tmp_path / "logs" / "app.log"
    live.write_bytes(b"old content\n" * 5)
    entry = checkpoint(live, "app", 60)
    live.write_bytes(b"other content, same inode\n")  # truncated and rewritten in place
    config = parse_config(config_text(tmp_path), origin="<test>")

    [status] = file_statuses([entry], config)

    assert status.state == "gone"


def test_table_sorts_by_lag_then_path_and_aligns_columns(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    paths = []
    for name, size in (("b.log", 5000), ("a.log", 5000), ("c.log", 100)):
        path = tmp_path / "logs" / name
        path.write_bytes(b"x" * (size - 1) + b"\n")
        paths.append(path)
    config = parse_config(config_text(tmp_path), origin="<test>")
    entries = [checkpoint(path, "app", 10) for path in paths]
    statuses = sorted(file_statuses(entries, config), key=lambda s: (-s.lag, s.path))

    header, *rows, total = render_table(statuses, time.time()).splitlines()

    assert [row.split()[0] for row in rows] == ["a.log", "b.log", "c.log"]
    assert rows[0].split()[2:7] == ["10", "B", "5.0", "kB", "5.0"]
    assert "1m ago" in rows[0]
    assert {row.index("/") for row in rows} == {header.index("PATH")}  # aligned columns
    assert {row.index(" B ") + 2 for row in rows} == {header.index("OFFSET") + len("OFFSET")}
    assert total.split()[:3] == ["total:", "3", "files"]
    assert "10.1 kB" in total  # lag sum: 4990 + 4990 + 90


def test_show_status_json_is_one_object_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "app.log"
    path.write_bytes(b"hello\n" * 3)
    config = tmp_path / "shipper.yaml"
    config.write_text(config_text(tmp_path))
    store = CheckpointStore(tmp_path / "state" / "checkpoints.json", on_corrupt="fail")
    store.load()
    store.set(checkpoint(path, "app", 6))
    store.flush()

    assert show_status(config, as_json=True) == 0

    [line] = capsys.readouterr().out.splitlines()
    file = orjson.loads(line)
    assert file["offset"] == 6
    assert file["size"] == 18
    assert file["lag_bytes"] == 12
    assert 89 < file["age_seconds"] < 120
    assert file["updated_at"].endswith("Z")
