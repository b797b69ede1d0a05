"""The `shipper` command line: run, check-config, demo, version; exit 0 ok, 1 fatal, 2 config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from shipper import __version__
from shipper.config import Config, load_config
from shipper.errors import ConfigError, ShipperError
from shipper.telemetry.logging import setup_logging

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2

log = logging.getLogger("shipper.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper",
        description="Ship Docker json-file container logs: no lost line, no duplicate.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="ship logs as the config says, until stopped")
    run.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    check = commands.add_parser(
        "check-config", help="validate a config file without side effects (exit 0 valid, 2 not)"
    )
    check.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    demo = commands.add_parser(
        "demo",
        help="write a Docker-style log root with a built-in writer and ship it to a file",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("demo-output"),
        help="where to write (default: %(default)s)",
    )
    demo.add_argument("--containers", type=int, default=4, help="containers (default: %(default)s)")
    demo.add_argument(
        "--lines", type=int, default=5000, help="lines per container (default: %(default)s)"
    )
    demo.add_argument(
        "--rate", type=int, default=5000, help="lines per second in all (default: %(default)s)"
    )
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"shipper {__version__}")
        return EXIT_OK
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "demo":
        from shipper.demo import run_demo  # noqa: PLC0415 - only the demo needs the writer

        return run_demo(args.dir, containers=args.containers, lines=args.lines, rate=args.rate)
    return _run(args.config)


def _check_config(path: Path | None) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"shipper: invalid config\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"{path or 'embedded default'}: valid "
        f"({len(config.sources)} source(s), {len(config.outputs)} output(s))"
    )
    return EXIT_OK


def _run(path: Path | None) -> int:
    setup_logging()
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("Invalid config; not starting.", extra={"error": str(exc)})
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    return run_until_signalled(config)


def run_until_signalled(config: Config) -> int:
    """Run shipper until SIGTERM or SIGINT, then shut down cleanly."""
    from shipper.app import App  # noqa: PLC0415 - keep `shipper version` light

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await App(config).run(stop)

    try:
        asyncio.run(main())
    except ShipperError as exc:
        log.error("shipper cannot go on.", extra={"error": str(exc)})
        return EXIT_FATAL
    return EXIT_OK
