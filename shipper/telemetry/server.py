"""The monitoring endpoint: Prometheus metrics and liveness/readiness probes over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import TCPServer, ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shipper import __version__
from shipper.config import MonitoringConfig, load_config
from shipper.errors import ConfigError
from shipper.telemetry.counters import DEFINITIONS, Definition, Kind, Telemetry
from shipper.telemetry.health import NOT_STARTED, STARTING, Verdict, assess
from shipper.telemetry.report import (
    LabelledHistogram,
    LabelledSample,
    WorkerBoard,
    WorkerReport,
    combine_histograms,
    combine_samples,
    counts_of,
    labels_of,
)

if TYPE_CHECKING:
    from shipper.app import App

log = logging.getLogger(__name__)

# The heartbeat runs on the event loop this often: it proves the loop runs (/livez) and judges
# readiness there, where the App's state changes, so the HTTP thread reads a finished verdict.
HEARTBEAT_INTERVAL = 1.0
# /livez fails once the loop has not run the heartbeat for this long: long enough that a burst
# of work (a huge chunk, a slow disk) does not get the process restarted, short enough that a
# hung loop is.
LIVENESS_TIMEOUT = 30.0
# How long `shipper health` waits for an answer: a HEALTHCHECK's own timeout is longer.
PROBE_TIMEOUT = 5.0
# How often the serving thread looks for a stop request: bounds how long stop() blocks.
SHUTDOWN_POLL = 0.2

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

JSON = [("Content-Type", "application/json")]


class TelemetryCollector(Collector):
    """Every declared family with its help (shipper.telemetry.counters.DEFINITIONS), filled at
    each scrape from `samples` (counter and gauge series: name, labels, value) and `histograms`;
    each series once (Prometheus refuses a scrape that repeats one)."""

    def __init__(
        self,
        samples: Callable[[], Iterable[LabelledSample]],
        histograms: Callable[[], Iterable[LabelledHistogram]],
    ) -> None:
        self._samples = samples
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        families = {name: _family(name, d) for name, d in DEFINITIONS.items()}
        for name, labels, value in self._samples():
            family = families[name]
            assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)  # noqa: S101
            family.add_metric(_label_values(name, labels), value)
        for name, labels, histogram in self._histograms():
            family = families[name]
            assert isinstance(family, HistogramMetricFamily)  # noqa: S101
            family.add_metric(
                _label_values(name, labels),
                [(_bound(bound), count) for bound, count in histogram.buckets],
                histogram.sum,
            )
        yield from families.values()


def _family(name: str, definition: Definition) -> Metric:
    labels = list(definition.labels)
    match definition.kind:
        case Kind.COUNTER:
            # prometheus_client names a counter family without `_total` and adds it to the
            # exposed names: given `x_total`, it strips and re-adds it, so `x_total` is what a
            # scraper sees (a counter not named `*_total` would come out renamed: the unit
            # tests hold every declared counter to the suffix).
            return CounterMetricFamily(name, definition.help, labels=labels)
        case Kind.GAUGE:
            return GaugeMetricFamily(name, definition.help, labels=labels)
        case Kind.HISTOGRAM:
            return HistogramMetricFamily(name, definition.help, labels=labels)


def _bound(bound: float) -> str:
    """A bucket's `le` as Prometheus writes it: 0.005, 1.0, +Inf."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _label_values(name: str, labels: dict[str, str]) -> list[str]:
    return [labels[label] for label in DEFINITIONS[name].labels]


class MonitoringServer:
    """Serves /metrics, /livez and /readyz for one process, across config reloads.

    Three roles. A single process (pipeline.workers: 1) listens and reports on its own App. A
    worker (`listen=False`) listens nowhere: it judges its App's readiness on its event loop as
    a single process does, and hands its state to the supervisor with report(). The supervisor
    listens and, once it calls watch_workers(), answers from the workers' reports.
    """

    def __init__(
        self, config: MonitoringConfig, telemetry: Telemetry, *, listen: bool = True
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.listen = listen
        self.port: int | None = None  # the bound port once listening (port 0 picks one)
        # Ours alone, not prometheus_client's global REGISTRY: two servers in one process (a
        # test, or a reload that moved the endpoint) do not share or clash.
        self.registry = CollectorRegistry()
        self.registry.register(TelemetryCollector(self._samples, self._histograms))
        # process_* (memory, CPU, open fds) describes the process serving /metrics only: with
        # workers, the supervisor, not the workers that do the shipping.
        ProcessCollector(registry=self.registry)
        self._metrics = make_wsgi_app(self.registry)
        self._board: WorkerBoard | None = None  # the supervisor's workers, once watched
        self._app: App | None = None
        self._verdict = NOT_STARTED
        self._beat: float | None = None  # time.monotonic() of the last heartbeat
        self._heartbeat: asyncio.Task[None] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen; a port that cannot be bound is logged and shipper runs on without it. A
        worker (`listen=False`) only starts the heartbeat, whatever `enabled` says: its
        reports carry the readiness the heartbeat judges, and the supervisor serves them."""
        config = self.config
        if not self.listen:
            self._start_heartbeat()
            return
        if not config.enabled:
            log.info("Monitoring endpoint disabled.")
            return
        try:
            server = _bind(config.host, config.port, self._wsgi)
        except OSError as exc:
            log.error(
                "Cannot listen for monitoring; shipper runs on without metrics and probes.",
                extra={
                    "address": _address(config.host, config.port),
                    "error": exc.strerror or str(exc),
                },
            )
            return
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL},
            name="monitoring",
            daemon=True,  # never keeps the process alive on its own
        )
        self._thread.start()
        self._start_heartbeat()
        log.info(
            "Monitoring endpoint listening.",
            extra={"url": f"http://{_address(_client_host(config.host), self.port)}"},
        )

    def _start_heartbeat(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop to watch: a test, or the supervisor, whose probes answer from its
            # WorkerBoard. Otherwise /livez answers 503.
            return
        self._beat = time.monotonic()  # the loop runs: it is running this
        self._heartbeat = loop.create_task(self._beating(), name="monitoring:heartbeat")

    def watch(self, app: App) -> None:
        """The App whose state the probes report from now on (a reload starts a new one)."""
        self._app = app
        self._verdict = NOT_STARTED  # until the next heartbeat judges the new App

    def watch_workers(self, board: WorkerBoard) -> None:
        """The supervisor: from now on /readyz and /livez answer from `board`, and /metrics
        exports this process's own series (reloads, restarts, its log lines) combined with the
        workers' (shipper.telemetry.report.MAX_GAUGES says how)."""
        self._board = board

    def report(self, worker: int) -> WorkerReport:
        """A worker's state for the supervisor (on the event loop, where the App's state
        changes): its series, the ages computed from its App, its histograms and readiness.
        Not shipper_build_info or shipper_ready: the supervisor writes those for the host."""
        now = time.monotonic()
        samples = tuple(
            (name, labels_of(labels), value)
            for name, labels, value in (*self.telemetry.samples(), *self._app_series(now))
        )
        histograms = tuple(
            (name, labels_of(labels), counts_of(histogram), histogram.sum)
            for name, labels, histogram in self.telemetry.histograms()
        )
        app = self._app
        started = app is not None and app.started.is_set()
        return WorkerReport(worker, samples, histograms, self.readiness(), started)

    def stop(self) -> None:
        """Stop listening."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- state, judged on the event loop --------------------------------------------------------

    async def _beating(self) -> None:
        while True:
            self.heartbeat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def heartbeat(self) -> None:
        """On the event loop: note that it runs, and judge readiness."""
        now = time.monotonic()
        self._beat = now
        verdict = assess(self._app, now, self.config.health)
        previous, self._verdict = self._verdict, verdict
        # Said when a cause appears and when it is gone, not at every beat; starting is no cause.
        if _troubled(verdict) and not _troubled(previous):
            log.warning("Not ready.", extra={"reasons": list(verdict.reasons)})
        elif _troubled(previous) and verdict.ready:
            log.info("Ready again.")

    def readiness(self) -> Verdict:
        """The last verdict, unless the event loop stopped judging (any thread); for the
        supervisor, its workers' (WorkerBoard.readiness)."""
        board = self._board
        if board is not None:
            return board.readiness(time.monotonic())
        stale = self._stale()
        if stale is not None:
            return Verdict(False, (stale,))
        return self._verdict

    def liveness(self) -> Verdict:
        board = self._board
        if board is not None:
            return board.liveness(time.monotonic())
        stale = self._stale()
        return Verdict(False, (stale,)) if stale is not None else Verdict(True)

    def _stale(self) -> str | None:
        beat = self._beat
        if beat is None:
            return "no event loop is watched"
        silent = time.monotonic() - beat
        if silent > LIVENESS_TIMEOUT:
            return f"the event loop has not run for {silent:.0f}s"
        return None

    def _samples(self) -> list[LabelledSample]:
        """Every counter and gauge series /metrics exports (on an HTTP thread)."""
        status = [
            ("shipper_build_info", {"version": __version__}, 1.0),
            ("shipper_ready", {}, 1.0 if self.readiness().ready else 0.0),
        ]
        board = self._board
        if board is None:
            now = time.monotonic()
            return [*self.telemetry.samples(), *status, *self._app_series(now)]
        # The supervisor's own series and its workers' may share a series (its log lines
        # suppressed and theirs): combined, so each series comes out once.
        return [*combine_samples(self.telemetry.samples(), board.samples()), *status]

    def _histograms(self) -> list[LabelledHistogram]:
        board = self._board
        if board is None:
            return self.telemetry.histograms()
        return combine_histograms(self.telemetry.histograms(), board.histograms())

    def _app_series(self, now: float) -> Iterator[LabelledSample]:
        """The families computed from the watched App (on the HTTP thread at a scrape, or the
        event loop for a report: reads single attributes only)."""
        app = self._app
        if app is None:
            return
        current_at = app.checkpoints_current_at
        if current_at is not None:
            yield "shipper_checkpoint_age_seconds", {}, max(0.0, now - current_at)
        for output in app.outputs:
            since = output.failing_since
            failing = max(0.0, now - since) if since is not None else 0.0
            yield "shipper_output_failing_seconds", {"output": output.name}, failing

    # -- HTTP (on the server's threads) ---------------------------------------------------------

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        routes: dict[str, WSGIApplication] = {
            "/metrics": self._metrics,
            "/livez": lambda env, respond: _probe_answer(
                self.liveness(), ("alive", "unresponsive"), respond
            ),
            "/readyz": lambda env, respond: _probe_answer(
                self.readiness(), ("ready", "unready"), respond
            ),
        }
        route = routes.get(path)
        if route is None:
            return _answer(start_response, "404 Not Found", {"error": "not found"})
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [*JSON, ("Allow", "GET, HEAD")])
            return [orjson.dumps({"error": "method not allowed"})]
        try:
            return route(environ, start_response)
        except Exception:
            # wsgiref would print a traceback to stderr, which holds our JSON logs.
            log.exception("Monitoring request failed.", extra={"path": path})
            return _answer(start_response, "500 Internal Server Error", {"error": "internal"})


def _troubled(verdict: Verdict) -> bool:
    return not verdict.ready and verdict.reasons != (STARTING,)


def _probe_answer(
    verdict: Verdict, statuses: tuple[str, str], start_response: StartResponse
) -> list[bytes]:
    """200 {"status": good}, or 503 {"status": bad, "reasons": [...]}."""
    good, bad = statuses
    if verdict.ready:
        return _answer(start_response, "200 OK", {"status": good})
    return _answer(
        start_response,
        "503 Service Unavailable",
        {"status": bad, "reasons": list(verdict.reasons)},
    )


def _answer(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    start_response(status, [*JSON, ("Cache-Control", "no-store")])
    return [orjson.dumps(body)]


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per request, as prometheus_client's own start_http_server serves: a slow
    scraper does not hold up the kubelet's probes."""

    daemon_threads = True

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "::" serves IPv4 too, whatever the host's default: `shipper health` and most
            # probes ask 127.0.0.1.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer.server_bind: it looks up the bound address's DNS name, which can hang
        # for seconds on a host without a resolver.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request on stderr, which holds our JSON logs."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def _bind(host: str, port: int, app: WSGIApplication) -> WSGIServer:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(_Server):
        address_family = family

    return make_server(host, port, app, server_class=Server, handler_class=_QuietHandler)


def _address(host: str, port: int | None) -> str:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{host}]:{port}" if literal.version == 6 else f"{host}:{port}"


def _client_host(host: str) -> str:
    """Where a client on this host reaches an endpoint bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared only


# -- `shipper health` -----------------------------------------------------------------------------


def probe(path: Path | None, *, live: bool) -> int:
    """`shipper health`: 0 when the running shipper answers ready (or alive), 1 when not."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        _say(f"shipper health: invalid config\n{exc}", error=True)
        return EXIT_CONFIG
    monitoring = config.monitoring
    if not monitoring.enabled or monitoring.port == 0:
        why = "is off (monitoring.enabled)" if not monitoring.enabled else "has no fixed port"
        _say(f"shipper health: the monitoring endpoint {why}: nothing to ask", error=True)
        return EXIT_CONFIG
    good = "alive" if live else "ready"
    address = _address(_client_host(monitoring.host), monitoring.port)
    url = f"http://{address}/{'livez' if live else 'readyz'}"
    # No proxy: the endpoint is on this host, and an http_proxy in the environment would
    # answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=PROBE_TIMEOUT) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        _say(f"shipper health: no answer from {url}: {reason}", error=True)
        return EXIT_FAILED
    if status == 200:
        _say(f"{good} ({url})")
        return EXIT_OK
    try:
        reasons = orjson.loads(body).get("reasons") or []
    except (orjson.JSONDecodeError, AttributeError):
        reasons = []
    why = "; ".join(str(reason) for reason in reasons) or f"HTTP {status}"
    _say(f"shipper health: not {good}: {why}", error=True)
    return EXIT_FAILED


def _say(line: str, *, error: bool = False) -> None:
    """One line for the operator (or the HEALTHCHECK's log): stdout, or stderr for a failure."""
    stream = sys.stderr if error else sys.stdout
    stream.write(line + "\n")
    stream.flush()
