"""CRI container logs (containerd, CRI-O): lines decoded into record groups, pod fields from paths.

The runtime writes one entry a line: `<RFC3339Nano time> <stdout|stderr> <tag> <message>\\n`. The
message is the application's bytes as they were, without the line ending. The tag's first letter
says whether the entry ends a line (`F`) or is a part of a longer one continued in that stream's
next entry (`P`): containerd cuts lines at `max_container_log_line_size` (16 KiB by default), and
a container's last output without newline is a `P` entry too. Tags may grow more letters after a
`:`; only the first matters. A line not in this format ships as raw text flagged `invalid_cri`.

The kubelet names each file `<root>/<namespace>_<pod>_<pod uid>/<container>/<restart>.log` and
links `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` to it, so the pod
fields come from the path and the container id from the links.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from shipper import __version__
from shipper.model import Chunk, RangeClaim, RecordGroup
from shipper.processing.metadata import ECS_VERSION
from shipper.sources.docker_json import normalize_time
from shipper.sources.partials import (
    FLAG_INVALID_TIME,
    FLAG_PARTIAL_HEAD_LOST,
    PartialJoiner,
    append_partial,
)
from shipper.sources.plain import FLAG_INVALID_UTF8

FLAG_INVALID_CRI = "invalid_cri"

# The stream field as the str every record shares: no decoding per line.
_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}


# The per-line loop stays in one function on purpose: a call per line costs throughput.
def decode_cri_chunk(  # noqa: PLR0912, PLR0915
    chunk: Chunk,
    *,
    read_time: str,
    joiner: PartialJoiner | None = None,
    hold: RangeClaim | None = None,
    now: float = 0.0,
) -> RecordGroup:
    """Decode every CRI line of `chunk`; `read_time` stands in for an entry without a valid time.

    The contract of shipper.sources.docker_json.decode_chunk: with a `joiner` (one per container)
    `P` entries wait there, keeping `hold` held, and the line becomes one record where its `F`
    entry is; without one, each entry is a record. Invalid UTF-8 in an `F` entry is replaced and
    the record flagged `invalid_utf8`; in a `P` part it is only replaced, because the runtime
    cuts parts by bytes and may split a character itself (as dockerd does, DESIGN.md §4).
    """
    group = RecordGroup(file=chunk.file, start=chunk.start, end=chunk.end)
    timestamps = group.timestamps
    messages = group.messages
    streams = group.streams
    offsets = group.offsets
    ends = group.ends
    flags = group.flags
    stream_of = _STREAMS.get
    position = chunk.start
    lines = chunk.data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the data ended with a newline: no line after it
    for line in lines:
        offset = position
        position += len(line) + 1
        if not line or line == b"\r":
            continue  # blank lines are not entries and carry nothing; their bytes settle
        fields = line.split(b" ", 3)
        count = len(fields)
        stream = stream_of(fields[1]) if count > 2 else None
        if stream is not None:
            tag = fields[2]
            if tag == b"F":
                full = True
            elif tag == b"P":
                full = False
            else:
                # Later tags after a ":" ("F:x") change nothing we read.
                first = tag.partition(b":")[0]
                full = first == b"F"
                if not full and first != b"P":
                    stream = None
        if stream is None:
            index = len(messages)
            text = line.decode("utf-8", "replace")
            messages.append(text[:-1] if text.endswith("\r") else text)
            streams.append("")
            timestamps.append(read_time)
            offsets.append(offset)
            ends.append(position)
            flags[index] = (FLAG_INVALID_CRI,)
            group.invalid_json += 1
            continue
        # An empty message still has the space before it; a writer that drops it loses nothing.
        raw = fields[3] if count == 4 else b""
        if not full and joiner is not None:
            # Part of a longer line: wait for the rest in this stream.
            timestamp = normalize_time(fields[0].decode("latin-1"))
            joiner.add(
                stream,
                raw.decode("utf-8", "replace"),
                file=chunk.file,
                offset=offset,
                end=min(position, chunk.end),
                timestamp=timestamp or read_time,
                time_valid=timestamp is not None,
                hold=hold,
                now=now,
            )
            continue
        if full and raw.endswith(b"\r"):
            raw = raw[:-1]  # containerd strips CRLF itself; a writer that keeps the \r does not
        try:
            message = raw.decode()
            valid_utf8 = True
        except UnicodeDecodeError:
            message = raw.decode("utf-8", "replace")
            valid_utf8 = False
        index = len(messages)
        if joiner is not None and (joiner.pending or joiner.head_lost):
            partial = joiner.finish(stream, message, file=chunk.file, offset=offset, hold=hold)
            if partial is not None:
                append_partial(group, partial, stream, position)
                if not valid_utf8:
                    flags[index] = (*flags.get(index, ()), FLAG_INVALID_UTF8)
                continue
            if joiner.take_head_lost(stream):
                flags[index] = (FLAG_PARTIAL_HEAD_LOST,)
        messages.append(message)
        streams.append(stream)
        offsets.append(offset)
        ends.append(position)
        timestamp = normalize_time(fields[0].decode("latin-1"))
        if timestamp is None:
            timestamps.append(read_time)
            flags[index] = (*flags.get(index, ()), FLAG_INVALID_TIME)
            group.invalid_time += 1
        else:
            timestamps.append(timestamp)
        if not valid_utf8:
            flags[index] = (*flags.get(index, ()), FLAG_INVALID_UTF8)
    if ends and ends[-1] > chunk.end:
        ends[-1] = chunk.end  # the last line had no newline: it ends with the data
    return group


# -- pods ------------------------------------------------------------------------------------------

# Kubernetes names (apimachinery validation): a namespace and a container name are DNS-1123
# labels, a pod name a DNS-1123 subdomain; none may hold "_", which is why the kubelet can join
# them with it. A pod uid is a UUID, except that a static pod's is the hex MD5 of its manifest.
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_NAMESPACE = re.compile(_LABEL, re.ASCII)
_CONTAINER = _NAMESPACE
_POD = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_MAX_POD_NAME = 253
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_RESTART = re.compile(r"(0|[1-9]\d*)\.log", re.ASCII)
# `<pod>_<namespace>_<container>-<64 hex container id>.log` in /var/log/containers.
_CONTAINER_LINK = re.compile(r"[^/]+-([0-9a-f]{64})\.log", re.ASCII)


@dataclass(frozen=True, slots=True)
class PodLogRef:
    """Which pod and container a CRI log file belongs to, as its path says."""

    namespace: str
    pod_name: str
    pod_uid: str
    container_name: str
    restart_count: int


def parse_pod_log_path(path: str) -> PodLogRef | None:
    """The pod and container of `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, or
    None if the path does not have that shape. Only the last three parts are read, so any root
    works (e.g. /var/log/pods mounted at /host/var/log/pods)."""
    parts = path.rsplit("/", 3)
    if len(parts) != 4:
        return None
    _, pod_directory, container_name, file_name = parts
    restart = _RESTART.fullmatch(file_name)
    if restart is None or _CONTAINER.fullmatch(container_name) is None:
        return None
    names = pod_directory.split("_")
    if len(names) != 3:
        return None
    namespace, pod_name, pod_uid = names
    if (
        _NAMESPACE.fullmatch(namespace) is None
        or len(pod_name) > _MAX_POD_NAME
        or _POD.fullmatch(pod_name) is None
        or _UID.fullmatch(pod_uid) is None
    ):
        return None
    return PodLogRef(namespace, pod_name, pod_uid, container_name, int(restart[1]))


def pod_enrichment(
    ref: PodLogRef, *, host_name: str, container_id: str | None = None
) -> dict[str, Any]:
    """The ECS fields of a pod container's records, in the shape and order of the docker
    source's (shipper.processing.metadata.build_enrichment)."""
    container: dict[str, Any] = {"name": ref.container_name}
    if container_id:
        container = {"id": container_id, **container}
    return {
        "container": container,
        "kubernetes": {
            "namespace": ref.namespace,
            "pod": {"name": ref.pod_name, "uid": ref.pod_uid},
            "container": {"name": ref.container_name},
        },
        "host": {"name": host_name},
        "agent": {"type": "shipper", "version": __version__},
        "ecs": {"version": ECS_VERSION},
    }


def container_ids_from_symlinks(directory: str = "/var/log/containers") -> dict[str, str]:
    """The container id of each pod log file, by the file's real path, from the kubelet's links
    in `directory`; empty if the directory is missing or unreadable.

    Look a file up by `os.path.realpath` of its path: the links may name it through other
    symlinks (e.g. /var/log/pods itself linked elsewhere).
    """
    ids: dict[str, str] = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _CONTAINER_LINK.fullmatch(entry.name)
                if match is None:
                    continue
                try:
                    if not entry.is_symlink():
                        continue
                    target = os.path.realpath(entry.path)
                except OSError:
                    continue  # removed meanwhile, or a loop of links
                ids[target] = match[1]
    except OSError:
        return {}
    return ids
