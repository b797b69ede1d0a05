"""Writes a benchmark's input: a Docker containers/ root full of realistic json-file logs.

The root is written with `shipper.docker_writer` (the same byte-exact json-file writer the tests
use) and a `FakeClock`, so the same parameters always give the same bytes. Generation is slow and
is not what a benchmark measures, so a root already generated with the same parameters is reused:
`bench-manifest.json` in the root records the parameters and what was written, and is written
last, so an interrupted generation is never mistaken for a complete one.

    python bench/generate.py --root bench/out/docker --containers 20 --lines 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shipper import docker_writer
from shipper.docker_writer import DockerRootWriter, FakeClock, realistic_lines

MANIFEST_NAME = "bench-manifest.json"
# Bump when the layout of what generate_root writes changes in a way the parameters do not show.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GeneratedContainer:
    """One container of a generated root; its log holds seqs first_seq .. first_seq + lines - 1."""

    id: str
    name: str
    lines: int
    bytes: int
    first_seq: int
    files: dict[str, int]  # log file name (in the container directory) -> size in bytes


@dataclass(frozen=True)
class GeneratedRoot:
    """What a generated root holds on disk (rotated-away lines are not counted)."""

    root: Path
    lines: int
    bytes: int
    containers: list[GeneratedContainer]
    reused: bool
    seconds: float  # generation time; 0 when reused


def _writer_digest() -> str:
    # A change to the writer or to realistic_lines may change the bytes: regenerate then.
    return hashlib.sha256(Path(docker_writer.__file__).read_bytes()).hexdigest()[:16]


def _parameters(
    containers: int, lines: int, seed: int, max_size: int | None, max_file: int | None
) -> dict[str, object]:
    return {
        "format": FORMAT_VERSION,
        "writer": _writer_digest(),
        "containers": containers,
        "lines": lines,
        "seed": seed,
        "max_size": max_size,
        "max_file": max_file,
    }


def _container_id(seed: int, index: int) -> str:
    # Stable ids (Docker's are random): the same parameters give the same paths.
    return hashlib.sha256(f"shipper-bench-{seed}-{index}".encode()).hexdigest()


def _load_cached(root: Path, parameters: dict[str, object]) -> GeneratedRoot | None:
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("parameters") != parameters:
        return None
    containers = [GeneratedContainer(**c) for c in manifest["containers"]]
    for container in containers:
        directory = root / container.id
        for name, size in container.files.items():
            try:
                if (directory / name).stat().st_size != size:
                    return None
            except FileNotFoundError:
                return None
    return GeneratedRoot(
        root=root,
        lines=manifest["lines"],
        bytes=manifest["bytes"],
        containers=containers,
        reused=True,
        seconds=0.0,
    )


def _clear(root: Path) -> None:
    """Empty `root` for a new generation; refuse a directory that is not one of ours."""
    if not root.exists():
        return
    entries = list(root.iterdir())
    if entries and not (root / MANIFEST_NAME).exists():
        raise SystemExit(
            f"{root} is not empty and holds no {MANIFEST_NAME}: not a generated root, "
            "refusing to delete it"
        )
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # first: a half-cleared root is never reused
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def generate_root(
    root: Path,
    containers: int = 20,
    lines: int = 100_000,
    seed: int = 1,
    *,
    max_size: int | None = None,
    max_file: int | None = None,
) -> GeneratedRoot:
    """A root of `containers` containers that each logged `lines` realistic lines.

    No rotation by default, so every line stays on disk. `max_size` (bytes) and `max_file` turn
    rotation on, as Docker's log options do; lines rotated away are then gone (generation
    happens before anything reads them) and the counts returned are those left on disk.
    The lines of all containers are interleaved, as concurrent containers write them, and every
    message carries `seq=NNNNNN` (`shipper.docker_writer.SEQ_PATTERN`), 0 .. lines - 1 per
    container.
    """
    if containers < 1 or lines < 1:
        raise ValueError("containers and lines must be at least 1")
    parameters = _parameters(containers, lines, seed, max_size, max_file)
    cached = _load_cached(root, parameters)
    if cached is not None:
        return cached

    started = time.monotonic()
    _clear(root)
    rng = random.Random(seed)
    with DockerRootWriter(root, clock=FakeClock()) as writer:
        logs = [
            writer.add_container(
                f"bench-{index + 1:03d}",
                image="bench/app:1.0",
                labels={"com.example.service": "shop", "com.example.instance": str(index + 1)},
                max_size=max_size,
                max_file=max_file,
                container_id=_container_id(seed, index),
            )
            for index in range(containers)
        ]
        streams = [realistic_lines(rng, lines, container=log.name) for log in logs]
        pairs = list(zip(logs, streams, strict=True))
        for _ in range(lines):
            for log, messages in pairs:
                stream, message = next(messages)
                log.write(message, stream=stream)

    generated: list[GeneratedContainer] = []
    for log in logs:
        files: dict[str, int] = {}
        line_count = 0
        for path in log.log_files():
            with path.open("rb") as f:
                data = f.read()
            files[path.name] = len(data)
            line_count += data.count(b"\n")
        generated.append(
            GeneratedContainer(
                id=log.id,
                name=log.name,
                lines=line_count,
                bytes=sum(files.values()),
                # Each message is one entry and seqs are consecutive: rotation drops a prefix.
                first_seq=lines - line_count,
                files=files,
            )
        )
    result = GeneratedRoot(
        root=root,
        lines=sum(c.lines for c in generated),
        bytes=sum(c.bytes for c in generated),
        containers=generated,
        reused=False,
        seconds=time.monotonic() - started,
    )
    manifest = {
        "parameters": parameters,
        "lines": result.lines,
        "bytes": result.bytes,
        "containers": [asdict(c) for c in generated],
    }
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the containers/ directory")
    parser.add_argument("--containers", type=int, default=20, help="default: %(default)s")
    parser.add_argument(
        "--lines", type=int, default=100_000, help="lines per container (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="default: %(default)s")
    parser.add_argument(
        "--max-size", type=int, default=None, help="rotate at this many bytes (default: never)"
    )
    parser.add_argument(
        "--max-file", type=int, default=None, help="files kept with --max-size (Docker's max-file)"
    )
    args = parser.parse_args(argv)
    result = generate_root(
        args.root,
        args.containers,
        args.lines,
        args.seed,
        max_size=args.max_size,
        max_file=args.max_file,
    )
    how = "reused" if result.reused else f"generated in {result.seconds:.1f}s"
    print(
        f"{result.root}: {len(result.containers)} containers, {result.lines:,} lines, "
        f"{result.bytes / 1e6:,.1f} MB ({how})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
