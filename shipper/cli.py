"""The `shipper` command line: run, status, replay-dead-letters, health, check-config, setup,
test-output, demo, version; exit 0 ok, 1 fatal, 2 config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from shipper import __version__
from shipper.config import (
    DEFAULT_ORIGIN,
    Config,
    ConsoleOutputConfig,
    ElasticsearchOutputConfig,
    FileOutputConfig,
    OutputConfig,
    SplunkHecOutputConfig,
    load_config,
)
from shipper.errors import ConfigError, ShipperError
from shipper.telemetry.logging import setup_logging

if TYPE_CHECKING:
    from shipper.sinks.es_setup import Plan

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
    run.add_argument(
        "--once",
        action="store_true",
        help="backfill: ship everything up to the files' current ends, then exit",
    )
    status = commands.add_parser(
        "status",
        help="how far each log file is shipped, from the checkpoint file (also while running)",
    )
    status.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    status.add_argument("--json", action="store_true", help="one JSON object per file")
    replay = commands.add_parser(
        "replay-dead-letters",
        help="send the dead-lettered records again, once their cause is fixed",
    )
    replay.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    replay.add_argument(
        "--file", type=Path, help="dead-letter file to replay (default: the configured one)"
    )
    replay.add_argument("--output", metavar="NAME", help="only records rejected by this output")
    replay.add_argument(
        "--dry-run", action="store_true", help="say what would be sent; send nothing"
    )
    health = commands.add_parser(
        "health",
        help="ask a running shipper whether it is ready (exit 0) or not (1): for HEALTHCHECKs",
    )
    health.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    health.add_argument(
        "--live", action="store_true", help="ask whether it is alive instead of ready"
    )
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
    setup = commands.add_parser(
        "setup",
        help="install the index template, lifecycle policy and data stream of each "
        "elasticsearch output (exit 0 done, 1 failed, 2 invalid config)",
    )
    setup.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    setup.add_argument("--output", metavar="NAME", help="only this output (default: all)")
    setup.add_argument(
        "--delete-after",
        default="30d",
        metavar="AGE",
        help="delete data this long after a data stream's rollover or a dated index's creation: "
        "e.g. 30d, 12h, or never (default: %(default)s)",
    )
    setup.add_argument(
        "--dry-run", action="store_true", help="print what would be installed; connect to nothing"
    )
    test = commands.add_parser(
        "test-output",
        help="check that each output can ship (connection, cluster version, privileges); sends "
        "no data (exit 0 can ship, 1 cannot, 2 invalid config)",
    )
    test.add_argument("--config", type=Path, help="YAML config file (default: the embedded one)")
    test.add_argument("--output", metavar="NAME", help="only this output (default: all)")
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


def _version(args: argparse.Namespace) -> int:
    del args
    print(f"shipper {__version__}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from shipper.status import show_status  # noqa: PLC0415 - each command imports its own

    return show_status(args.config, as_json=args.json)


def _replay(args: argparse.Namespace) -> int:
    from shipper.replay import replay_dead_letters  # noqa: PLC0415

    return replay_dead_letters(
        args.config, file=args.file, output=args.output, dry_run=args.dry_run
    )


def _health(args: argparse.Namespace) -> int:
    from shipper.telemetry.server import probe  # noqa: PLC0415

    return probe(args.config, live=args.live)


def _demo(args: argparse.Namespace) -> int:
    from shipper.demo import run_demo  # noqa: PLC0415 - only the demo needs the writer

    return run_demo(args.dir, containers=args.containers, lines=args.lines, rate=args.rate)


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


def _chosen_outputs(
    config: Config, path: Path | None, only: str | None, *, elasticsearch_only: bool
) -> dict[str, OutputConfig]:
    """The outputs a command works on: all, or the one `--output` names (ConfigError else)."""
    origin = str(path) if path is not None else DEFAULT_ORIGIN
    outputs = dict(config.outputs)
    if only is not None:
        if only not in outputs:
            defined = ", ".join(sorted(outputs))
            raise ConfigError(f"{origin}: --output: no output of this name (defined: {defined})")
        outputs = {only: outputs[only]}
    if elasticsearch_only:
        outputs = {
            name: output
            for name, output in outputs.items()
            if isinstance(output, ElasticsearchOutputConfig)
        }
        if not outputs:
            what = "this output is not" if only is not None else "no output is"
            raise ConfigError(f"{origin}: {what} of type elasticsearch: nothing to set up")
    return outputs


def _describe_output(output: OutputConfig) -> str:
    if isinstance(output, ElasticsearchOutputConfig):
        kind = "index" if output.index is not None else "data stream"
        return f"elasticsearch, {kind} {output.target.text}"
    if isinstance(output, FileOutputConfig):
        return f"file {output.path}"
    if isinstance(output, SplunkHecOutputConfig):
        return f"splunk_hec, {output.url}"
    assert isinstance(output, ConsoleOutputConfig)  # noqa: S101 - the union's last type
    return f"console, {output.stream}"


def _say(line: str) -> None:
    print(f"  {line}", flush=True)


def _warn(line: str) -> None:
    print(f"  warning: {line}", flush=True)


def _load_outputs(
    command: str, path: Path | None, only: str | None, *, elasticsearch_only: bool
) -> dict[str, OutputConfig] | None:
    setup_logging()
    try:
        config = load_config(path)
        outputs = _chosen_outputs(config, path, only, elasticsearch_only=elasticsearch_only)
    except ConfigError as exc:
        print(f"shipper {command}: invalid config\n{exc}", file=sys.stderr)
        return None
    setup_logging(config.logging.level, config.logging.format, rate_limit=config.logging.rate_limit)
    return outputs


def _setup(path: Path | None, only: str | None, delete_after: str, *, dry_run: bool) -> int:
    from shipper.sinks import es_setup  # noqa: PLC0415 - the client is heavy to import

    try:
        retention = es_setup.parse_delete_after(delete_after)
    except ValueError as exc:
        print(f"shipper setup: --delete-after: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    outputs = _load_outputs("setup", path, only, elasticsearch_only=True)
    if outputs is None:
        return EXIT_CONFIG
    failed: list[str] = []

    async def setup_all() -> None:
        for name, output in outputs.items():
            assert isinstance(output, ElasticsearchOutputConfig)  # noqa: S101 - chosen so
            print(f"output {name} ({_describe_output(output)}):", flush=True)
            try:
                if dry_run:
                    _print_plan(es_setup.plan_setup(output, delete_after=retention))
                else:
                    await es_setup.run_setup(
                        name, output, delete_after=retention, say=_say, warn=_warn
                    )
            except ShipperError as exc:
                print(f"shipper setup: output {name}: {exc}", file=sys.stderr, flush=True)
                failed.append(name)

    asyncio.run(setup_all())
    if failed:
        return EXIT_FATAL
    if not dry_run:
        print(f"setup done: {len(outputs)} output(s)")
    return EXIT_OK


def _print_plan(plan: Plan) -> None:
    def show(request: str, body: object = None) -> None:
        print(f"  {request}")
        if body is not None:
            print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())

    if plan.policy_name is not None:
        show(f"PUT _ilm/policy/{plan.policy_name}", plan.policy)
    show(f"PUT _index_template/{plan.template_name}", plan.template)
    if plan.create is not None:
        show(f"PUT {'_data_stream/' if plan.data_stream else ''}{plan.create}  (if missing)")


def _test_output(path: Path | None, only: str | None) -> int:
    from shipper.sinks import es_setup  # noqa: PLC0415 - the client is heavy to import

    outputs = _load_outputs("test-output", path, only, elasticsearch_only=False)
    if outputs is None:
        return EXIT_CONFIG
    failed: list[str] = []

    async def check_all() -> None:
        for name, output in outputs.items():
            print(f"output {name} ({_describe_output(output)}):", flush=True)
            try:
                ok = await es_setup.check_output(name, output, say=_say, warn=_warn)
            except ShipperError as exc:
                print(f"shipper test-output: output {name}: {exc}", file=sys.stderr, flush=True)
                ok = False
            if not ok:
                failed.append(name)

    asyncio.run(check_all())
    if failed:
        print(f"shipper test-output: cannot ship: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FATAL
    print(f"ok: {len(outputs)} output(s) can ship")
    return EXIT_OK


def _run(path: Path | None, *, once: bool) -> int:
    # SIGHUP's default action ends the process: held back until the runner handles it (a
    # reload asked for during startup then happens once it runs).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    setup_logging()
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("Invalid config; not starting.", extra={"error": str(exc)})
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format, rate_limit=config.logging.rate_limit)
    from shipper.runner import run_until_signalled  # noqa: PLC0415 - keep `shipper version` light

    return run_until_signalled(config, path, once=once)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": lambda args: _run(args.config, once=args.once),
    "status": _status,
    "replay-dead-letters": _replay,
    "health": _health,
    "check-config": lambda args: _check_config(args.config),
    "setup": lambda args: _setup(args.config, args.output, args.delete_after, dry_run=args.dry_run),
    "test-output": lambda args: _test_output(args.config, args.output),
    "demo": _demo,
    "version": _version,
}
