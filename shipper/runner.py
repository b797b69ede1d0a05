"""The `run` command's process: signals, the monitoring endpoint, reloading the config on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from pathlib import Path

from shipper.app import App
from shipper.config import Config, load_config
from shipper.errors import ConfigError, ShipperError
from shipper.telemetry.counters import Telemetry
from shipper.telemetry.logging import setup_logging
from shipper.telemetry.server import MonitoringServer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1


def run_until_signalled(config: Config, path: Path | None, *, once: bool = False) -> int:
    """Run shipper until SIGTERM or SIGINT (or, with `once`, until the backlog is shipped),
    reloading `path` on SIGHUP; the exit code."""
    raise_open_files_limit()
    try:
        return asyncio.run(_serve(config, path, once=once))
    except ShipperError as exc:
        log.error("shipper cannot go on.", extra={"error": str(exc)})
        return EXIT_FATAL


def raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one: one descriptor per followed file, plus
    the deleted files still being drained, can pass the usual soft limit of 1,024 on a busy
    host long before the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or (hard != resource.RLIM_INFINITY and soft > hard):
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning(
            "Cannot raise the open-files limit.",
            extra={"soft": soft, "hard": hard, "error": str(exc)},
        )
        return
    log.info("Raised the open-files limit.", extra={"from": soft, "to": hard})


async def _serve(config: Config, path: Path | None, *, once: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    telemetry = Telemetry()
    monitoring = MonitoringServer(config.monitoring, telemetry)
    monitoring.start()
    try:
        if once:
            from shipper.backfill import run_backfill  # noqa: PLC0415 - only --once needs it

            # A backfill ends by itself; a reload would only start it over.
            loop.add_signal_handler(signal.SIGHUP, _ignore_reload)
            return await run_backfill(App(config, telemetry=telemetry, once=True), stop)
        running: Config | None = config
        previous: Config | None = None  # the config that ran before a reload
        while running is not None:
            app = App(running, telemetry=telemetry)
            monitoring.watch(app)
            try:
                following = await _run_until_reloaded(app, path, stop, reload, telemetry)
            except ShipperError as exc:
                if previous is None or app.started.is_set():
                    raise
                # Valid but unable to start (an unwritable checkpoint path, an output that
                # refuses to open): go back to what ran before rather than stop shipping.
                log.error(
                    "The reloaded config could not start; going back to the previous one.",
                    extra={"error": str(exc)},
                )
                running, previous = previous, None
                continue
            if following is not None and following.monitoring != running.monitoring:
                monitoring.stop()
                monitoring = MonitoringServer(following.monitoring, telemetry)
                monitoring.start()
            running, previous = following, running
        return EXIT_OK
    finally:
        monitoring.stop()


def _ignore_reload() -> None:
    log.warning("SIGHUP ignored: a --once backfill does not reload its config.")


async def _run_until_reloaded(
    app: App,
    path: Path | None,
    stop: asyncio.Event,
    reload: asyncio.Event,
    telemetry: Telemetry,
) -> Config | None:
    """Run `app` until stopped (None) or until a valid config was loaded on SIGHUP (that
    config, once `app` has shut down in order and written its checkpoints)."""
    app_stop = asyncio.Event()
    running = asyncio.create_task(app.run(app_stop), name="app")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        while True:
            reloading = asyncio.create_task(reload.wait(), name="reload")
            await asyncio.wait({running, stopping, reloading}, return_when=asyncio.FIRST_COMPLETED)
            reloading.cancel()
            if running.done():
                running.result()  # raises the failure that ended it
                return None
            if stopping.done():
                app_stop.set()
                await running
                return None
            reload.clear()
            following = _reloaded(path, telemetry)
            if following is None:
                continue
            log.info("Reloading: stopping the running config in order, then starting the new one.")
            app_stop.set()
            await running
            return following
    finally:
        stopping.cancel()


def _reloaded(path: Path | None, telemetry: Telemetry) -> Config | None:
    """The config file read again and validated; None (and the reason logged) if it is not
    valid, so the running config goes on."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        telemetry.inc("shipper_reloads_total", result="invalid")
        log.error("Config reload refused; the running config goes on.", extra={"error": str(exc)})
        return None
    telemetry.inc("shipper_reloads_total", result="ok")
    setup_logging(config.logging.level, config.logging.format)
    return config
