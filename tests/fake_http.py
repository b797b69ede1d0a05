"""What the test servers (fake Elasticsearch, fake Splunk HEC) share: a threaded server on
127.0.0.1, and HTTP/1.1 request reading written by hand, so a server can answer before reading a
body, or read one and never answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, Self

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


class ThreadedHttpServer:
    """A test server on 127.0.0.1, a thread per connection (so a test that blocks its event
    loop cannot stop the server): lifetime, `down()`, and waiting on its state. Subclasses
    answer each request in `_answer`, holding `_lock` while they touch state and notifying
    `_changed` when it changed."""

    def __init__(self, port: int, *, name: str) -> None:
        self._name = name
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self.port = port

    # --- lifetime ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._stopping.clear()
        if self._listener is None:
            self._listen()

    def stop(self) -> None:
        self._stopping.set()
        self._close_listener()
        self._abort_connections()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Inside the block the server is gone: open connections are cut, new ones refused. It
        comes back on the same port, with its data, after the block."""
        self.stop()
        try:
            yield
        finally:
            self._stopping.clear()
            self._listen()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept,
            args=(listener,),
            name=f"fake-{self._name}-accept-{self.port}",
            daemon=True,
        )
        self._accept_thread.start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None

    def _abort_connections(self) -> None:
        with self._lock:
            connections = list(self._connections.items())
        for sock, _thread in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _sock, thread in connections:
            thread.join(timeout=5)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _address = listener.accept()
            except OSError:
                return  # the listener was closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(sock,), name=f"fake-{self._name}-connection", daemon=True
            )
            with self._lock:
                self._connections[sock] = thread
            thread.start()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until `predicate()` (checked after every request) holds; TimeoutError else."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout}s")

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """`wait_until` for async tests: polls with a deadline, the event loop keeps running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if predicate():
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.005)

    # --- connections -------------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        """One connection: requests read and answered in turn until either side closes."""
        rfile = sock.makefile("rb")
        try:
            while not self._stopping.is_set():
                head = read_head(rfile)
                if head is None:
                    break
                method, target, raw = head
                headers: dict[str, str] = {}
                for name, value in raw:  # a repeated header is one comma-separated value
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
                if not self._answer(sock, rfile, method, target, headers):
                    break
        except (OSError, ValueError, HttpError):
            pass  # the client went away, the connection was cut, or it spoke garbage
        finally:
            rfile.close()
            sock.close()
            with self._lock:
                self._connections.pop(sock, None)

    def _answer(
        self,
        sock: socket.socket,
        rfile: BinaryIO,
        method: str,
        target: str,
        headers: dict[str, str],
    ) -> bool:
        """Read the body (or not), answer the request; False when the connection must close.
        `headers`: lower-case names."""
        raise NotImplementedError
