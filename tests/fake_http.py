"""HTTP/1.1 request reading shared by the test servers (fake Elasticsearch, fake Splunk HEC):
written by hand so a server can answer before reading a body, or read one and never answer."""

from __future__ import annotations

from typing import BinaryIO

MAX_LINE = 64 * 1024  # longest request or header line read


class HttpError(Exception):
    """The bytes on the connection are not HTTP/1.1 this server can read."""


def read_head(rfile: BinaryIO) -> tuple[str, str, list[tuple[str, str]]] | None:
    line = rfile.readline(MAX_LINE)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(MAX_LINE)
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(f"bad request line {line!r}")
    headers: list[tuple[str, str]] = []
    while True:
        header = rfile.readline(MAX_LINE)
        if not header:
            raise HttpError("connection closed inside the headers")
        if header in (b"\r\n", b"\n"):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return parts[0], parts[1], headers


def read_exactly(rfile: BinaryIO, length: int) -> bytes:
    data = rfile.read(length) if length else b""
    if len(data) != length:
        raise HttpError("connection closed inside the body")
    return data


def discard(rfile: BinaryIO, length: int) -> None:
    while length > 0:
        chunk = rfile.read(min(length, 1 << 20))
        if not chunk:
            raise HttpError("connection closed inside the body")
        length -= len(chunk)


def read_chunked(rfile: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = rfile.readline(MAX_LINE)
        if not size_line:
            raise HttpError("connection closed inside a chunk size")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(read_exactly(rfile, size))
        rfile.readline(MAX_LINE)
